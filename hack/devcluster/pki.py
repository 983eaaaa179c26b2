"""Certificates and credentials of the local cluster, generated with the openssl CLI.

Owns: a CA, the API server's serving certificate (SANs for 127.0.0.1/localhost), the
service-account signing key, the admin token file (system:masters). Called by controlplane.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


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


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def generate(directory: Path) -> Pki:
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = d / "ca.key", d / "ca.crt"
    _openssl("genrsa", "-out", str(ca_key), "2048")
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "30", "-subj", "/CN=devcluster-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(ca_cert),
    )  # fmt: skip
    srv_key, srv_csr, srv_cert = d / "apiserver.key", d / "apiserver.csr", d / "apiserver.crt"
    _openssl("genrsa", "-out", str(srv_key), "2048")
    _openssl("req", "-new", "-key", str(srv_key), "-subj", "/CN=kube-apiserver", "-out", str(srv_csr))
    ext = d / "apiserver.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    )
    _openssl(
        "x509", "-req", "-in", str(srv_csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(srv_cert),
    )  # fmt: skip
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _openssl("genrsa", "-out", str(sa_key), "2048")
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    token = secrets.token_hex(24)
    token_file = d / "tokens.csv"
    token_file.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    for secret in (ca_key, srv_key, sa_key, token_file):
        secret.chmod(0o600)
    return Pki(d, ca_cert, ca_key, srv_cert, srv_key, sa_key, sa_pub, token_file, token)
