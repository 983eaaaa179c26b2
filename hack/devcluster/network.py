"""The real node's network on this machine: one bridge, addresses from 198.18.0.0/15 only.

Owns: the address plan, the `unreachable 198.18.0.0/15` guard route (installed first, never
removed: no packet for the range can leave the machine, even while no cluster runs), the bridge
carrying the node address, the host route to the Service range, the nftables table that drops
any forwarding between the bridge and another interface, the CNI config, and the teardown of all
of it (network namespaces and veths the CNI plugins left, ip_forward put back). Called by
devcluster.realnode.

Layout: bridge `mdnode0` holds 198.18.0.1/16: the node address (API server, kubelet), the pods'
gateway. Pods: 198.18.1.1-198.18.255.254 (host-local IPAM, no masquerading). Services:
198.19.0.0/16 (`kubernetes` = 198.19.0.1); the host reaches them through a route on the bridge,
because locally generated packets are routed before kube-proxy's DNAT hook.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

BRIDGE = "mdnode0"
RANGE = "198.18.0.0/15"
NODE_IP = "198.18.0.1"
POD_CIDR = "198.18.0.0/16"
SERVICE_CIDR = "198.19.0.0/16"
KUBERNETES_SERVICE_IP = "198.19.0.1"
GUARD_TABLE = "modeldeploy_node_guard"


def in_range(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(RANGE)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def guard_route() -> None:
    """`unreachable 198.18.0.0/15`: idempotent, left in place on teardown on purpose."""
    if f"unreachable {RANGE}" not in _run("ip", "route", "show", "type", "unreachable").stdout:
        _run("ip", "route", "add", "unreachable", RANGE)


def read_ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def up() -> None:
    """Guard route, bridge with the node address, Service route, forwarding guard (idempotent)."""
    guard_route()
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    if f"{NODE_IP}/16" not in _run("ip", "-o", "addr", "show", "dev", BRIDGE).stdout:
        _run("ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    if SERVICE_CIDR not in _run("ip", "route", "show", SERVICE_CIDR).stdout:
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
    nft = (
        f"table inet {GUARD_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -5; policy accept;\n"
        f'    iifname "{BRIDGE}" oifname != "{BRIDGE}" counter drop\n'
        f'    oifname "{BRIDGE}" iifname != "{BRIDGE}" counter drop\n'
        "  }\n}\n"
    )
    _run("nft", "delete", "table", "inet", GUARD_TABLE, check=False)
    subprocess.run(["nft", "-f", "-"], input=nft, text=True, check=True, capture_output=True)


def write_cni_config(conf_dir: Path, ipam_dir: Path) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    conf = {
        "cniVersion": "1.0.0",
        "name": "modeldeploy-node",
        "plugins": [
            {
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "rangeStart": "198.18.1.1", "rangeEnd": "198.18.255.254",
                                 "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }  # fmt: skip
    (conf_dir / "10-modeldeploy.conflist").write_text(json.dumps(conf, indent=2))


def down(ip_forward: str | None) -> list[str]:
    """Remove what up() and the CNI plugins made, except the guard route; what was removed."""
    done: list[str] = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("cni-"):
            _run("ip", "netns", "delete", name, check=False)
            done.append(f"netns {name}")
    # veths still attached to the bridge (their pod namespace is gone with the netns above)
    for line in _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout.splitlines():
        dev = line.split(": ")[1].split("@")[0]
        _run("ip", "link", "delete", dev, check=False)
        done.append(f"veth {dev}")
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        _run("ip", "link", "delete", BRIDGE)  # its /16 and the Service route go with it
        done.append(f"bridge {BRIDGE}")
    if _run("nft", "list", "table", "inet", GUARD_TABLE, check=False).returncode == 0:
        _run("nft", "delete", "table", "inet", GUARD_TABLE)
        done.append(f"nft table {GUARD_TABLE}")
    if ip_forward is not None and read_ip_forward() != ip_forward:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(ip_forward)
        done.append(f"ip_forward={ip_forward}")
    return done
