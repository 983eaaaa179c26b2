"""Certificates and credentials of the local cluster, generated with the openssl CLI.

Owns: a CA, the API server's serving certificate (SANs for 127.0.0.1/localhost, plus the node and
`kubernetes` Service addresses on the real node), the service-account signing key, the token
file (admin in system:masters; on the real node also the kubelet as system:node:<name>,
kube-proxy, and Prometheus, metrics-server and the custom metrics adapter as plain users that get
only their RBAC roles), and for the real node the kubelet's serving certificate and the API
server's client certificate towards the kubelet; for the aggregation layer (metrics-server and the
custom metrics adapter, devcluster.metrics) a front-proxy CA with the API server's proxy client
certificate, both servers' serving certificates and metrics-server's client certificate towards
the kubelet. Called by controlplane.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRONT_PROXY_CLIENT = "front-proxy-client"
PROMETHEUS_USER = "devcluster:prometheus"
METRICS_SERVER_USER = "devcluster:metrics-server"
ADAPTER_USER = "devcluster:metrics-adapter"
# the Services the APIServices v1beta1.metrics.k8s.io and v1beta2.custom.metrics.k8s.io name: the
# API server checks these names
METRICS_SERVER_DNS = "metrics-server.kube-system.svc"
ADAPTER_DNS = "metrics-adapter.kube-system.svc"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    sa_key: Path
    sa_pub: Path
    token_file: Path
    admin_token: str
    # the real node only (empty otherwise): token by user name, extra certificate files by name
    tokens: dict[str, str] = field(default_factory=dict)
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)


RBAC = "rbac.authorization.k8s.io"


def user_binding(
    user: str, kind: str, role: str, name: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    """A (Cluster)RoleBinding of the ClusterRole or Role `role` to the plain user `user` (a token of
    the token file): a ClusterRoleBinding for a ClusterRole, else a RoleBinding in `namespace`."""
    binding = "ClusterRoleBinding" if kind == "ClusterRole" else "RoleBinding"
    meta: dict[str, Any] = {"name": name or role, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": f"{RBAC}/v1", "kind": binding, "metadata": meta,
            "roleRef": {"apiGroup": RBAC, "kind": kind, "name": role},
            "subjects": [{"kind": "User", "name": user, "apiGroup": RBAC}]}  # fmt: skip


def user_role(user: str, name: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ClusterRole `name` with `rules` and its binding to the plain user `user`."""
    return [{"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
            user_binding(user, "ClusterRole", name)]  # fmt: skip


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _sign(d: Path, ca: tuple[Path, Path], name: str, subject: str, usage: str, san: str = "") -> tuple[Path, Path]:
    """A key and a certificate signed by the CA: (cert, key)."""
    key, csr, cert, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def _ca(d: Path, name: str, subject: str) -> tuple[Path, Path]:
    """A self-signed CA: (cert, key)."""
    key, cert = d / f"{name}.key", d / f"{name}.crt"
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", "30", "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(cert),
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def generate(directory: Path, node: tuple[str, str, str] | None = None) -> Pki:
    """node = (node name, node IP, `kubernetes` Service IP) for the real node, None otherwise."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = ca = _ca(d, "ca", "/CN=devcluster-ca")
    ips = "IP:127.0.0.1" + (f",IP:{node[1]},IP:{node[2]}" if node else "")
    srv_cert, srv_key = _sign(
        d, ca, "apiserver", "/CN=kube-apiserver", "serverAuth",
        f"{ips},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
    )  # fmt: skip
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _openssl("genrsa", "-out", str(sa_key), "2048")
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    token = secrets.token_hex(24)
    lines = [f'{token},admin,admin-uid,"system:masters"']
    tokens: dict[str, str] = {}
    certs: dict[str, tuple[Path, Path]] = {}
    if node:
        name, ip, _ = node
        # Prometheus, metrics-server and the adapter are plain users with only their roles (user_role,
        # bound by prometheus.rbac_manifests and metrics.rbac_manifests)
        users = ((f"system:node:{name}", "system:nodes"), ("system:kube-proxy", ""), (PROMETHEUS_USER, ""),
                 (METRICS_SERVER_USER, ""), (ADAPTER_USER, ""))  # fmt: skip
        for user, groups in users:
            tokens[user] = secrets.token_hex(24)
            line = f"{tokens[user]},{user},{user}-uid"
            lines.append(f'{line},"{groups}"' if groups else line)
        certs["kubelet-serving"] = _sign(
            d, ca, "kubelet-serving", f"/O=system:nodes/CN=system:node:{name}", "serverAuth", f"IP:{ip},DNS:{name}"
        )
        certs["apiserver-kubelet-client"] = _sign(
            d, ca, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth"
        )
        # the aggregation layer: the API server proxies to metrics-server with this client certificate
        # (its own CA, as a cluster's front proxy has: only FRONT_PROXY_CLIENT may assert X-Remote-User)
        front_ca = _ca(d, "front-proxy-ca", "/CN=devcluster-front-proxy-ca")
        certs["front-proxy-ca"] = front_ca
        certs["front-proxy-client"] = _sign(
            d, front_ca, "front-proxy-client", f"/CN={FRONT_PROXY_CLIENT}", "clientAuth"
        )
        certs["metrics-server"] = _sign(
            d, ca, "metrics-server", f"/CN={METRICS_SERVER_DNS}", "serverAuth", f"IP:{ip},DNS:{METRICS_SERVER_DNS}"
        )
        certs["metrics-adapter"] = _sign(
            d, ca, "metrics-adapter", f"/CN={ADAPTER_DNS}", "serverAuth", f"IP:{ip},DNS:{ADAPTER_DNS}"
        )
        certs["metrics-server-kubelet-client"] = _sign(
            d, ca, "metrics-server-kubelet-client", f"/CN={METRICS_SERVER_USER}", "clientAuth"
        )
    token_file = d / "tokens.csv"
    token_file.write_text("\n".join(lines) + "\n")
    for secret in (ca_key, srv_key, sa_key, token_file):
        secret.chmod(0o600)
    return Pki(d, ca_cert, ca_key, srv_cert, srv_key, sa_key, sa_pub, token_file, token, tokens, certs)
