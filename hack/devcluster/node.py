"""The real node's data plane processes: containerd 2, the kubelet and kube-proxy.

Owns: their config files (containerd config version 3 layout, KubeletConfiguration,
KubeProxyConfiguration), starting them, importing OCI archives into containerd (the pause image
and the project's image, never pulled), and the teardown that leaves nothing behind (tasks and
shims, mounts under the state folder, kube-proxy's nftables tables, the kubelet's cgroups).
Called by devcluster.realnode.

Facts of these machines that shape the config (see the README's local-cluster section):
root lacks CAP_SYS_RESOURCE, so containerd must clamp oom_score_adj (`restrict_oom_score_adj`) or
every sandbox fails with "can't get final child's PID from pipe: EOF"; the cgroup hierarchies are
v1, so the kubelet needs failCgroupV1: false and the cgroupfs driver; Debian's runc 1.1.5 and CNI
plugins 1.1.1 serve containerd v2.4.2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devcluster import network, procs

NODE_NAME = "modeldeploy-node"
PAUSE_IMAGE = "localhost/modeldeploy/pause:1"
CNI_BIN_DIR = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"


def child_env(bin_dir: Path) -> dict[str, str]:
    """The environment of every node process: our binaries first (containerd's v2 shim must win
    over any other on PATH), no proxy variables (nothing here may go through a proxy)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PATH"] = f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _q(p: Path | str) -> str:
    """A TOML literal string."""
    return "'" + str(p) + "'"


def containerd_config(root: Path, state: Path, sock: Path, cni_conf: Path) -> str:
    q = _q
    return f"""version = 3
root = {q(root)}
state = {q(state)}
imports = []

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_IMAGE}'

  [plugins.'io.containerd.cri.v1.runtime']
    # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (-998 for sandboxes) fails in runc
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{RUNC}'
          SystemdCgroup = false
          Root = {q(state / "runc")}
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{CNI_BIN_DIR}']
      conf_dir = {q(cni_conf)}

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  # containerd 2 (config version 3): the listeners are plugins, not top-level [grpc]/[ttrpc]
  [plugins.'io.containerd.server.v1.grpc']
    address = {q(sock)}
  [plugins.'io.containerd.server.v1.ttrpc']
    address = {q(str(sock) + ".ttrpc")}
  [plugins.'io.containerd.server.v1.debug']
    address = {q(str(sock) + ".debug")}
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.internal.v1.opt']
    path = {q(state / "opt")}
"""


def token_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> Path:
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user}}],
        "current-context": "devcluster",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


@dataclass
class Node:
    """containerd + kubelet + kube-proxy of one cluster (state folder), binaries in node_bin/kube_bin."""

    state: Path
    containerd_bin: Path
    kube_bin: Path
    server: str
    ca_cert: Path
    tokens: dict[str, str]
    serving_cert: tuple[Path, Path]
    kubelet_port: int = field(default_factory=procs.free_port)
    kubelet_healthz_port: int = field(default_factory=procs.free_port)
    proxy_metrics_port: int = field(default_factory=procs.free_port)
    proxy_healthz_port: int = field(default_factory=procs.free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir = self.state / "node"
        self.logs = self.state / "logs"
        # containerd's root (images, snapshots) is shared by every real-node cluster on this machine
        # (one at a time: devcluster.realnode holds a lock), so images stay imported between runs
        cache = Path(os.environ.get("MODELDEPLOY_CACHE", Path.home() / ".cache" / "modeldeploy"))
        self.containerd_root = cache / "node" / "containerd-root"
        # unix socket paths are limited to 108 bytes: keep the runtime state short, under /run
        self.run_dir = Path("/run/modeldeploy-node")
        self.sock = self.run_dir / "containerd.sock"
        self.env = child_env(self.containerd_bin)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run(
            [str(self.containerd_bin / "ctr"), "-a", str(self.sock), "-n", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, env=self.env,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout

    # --- containerd -------------------------------------------------------------------------
    def start_containerd(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        network.write_cni_config(self.dir / "cni" / "net.d", self.dir / "cni" / "ipam")
        cfg = self.dir / "containerd.toml"
        cfg.write_text(containerd_config(self.containerd_root, self.run_dir / "state", self.sock,
                                         self.dir / "cni" / "net.d"))  # fmt: skip
        self.sock.unlink(missing_ok=True)
        self._spawn("containerd", [str(self.containerd_bin / "containerd"), "--config", str(cfg)])

        def ready() -> bool:
            self.check_alive()
            return self.sock.exists() and "Server:" in self.ctr("version", check=False)

        procs.wait_until(ready, timeout, 0.1, "containerd socket")
        self._clear_stale_containers()

    def _clear_stale_containers(self) -> None:
        """Containers a crashed earlier cluster left in the shared root (their shims are gone)."""
        for cid in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False, timeout=10)
            self.ctr("tasks", "delete", "-f", cid, check=False, timeout=10)
            self.ctr("containers", "delete", cid, check=False, timeout=10)

    def images(self) -> set[str]:
        return set(self.ctr("images", "ls", "-q").split())

    def import_image(self, archive: Path, ref: str) -> bool:
        """Import an OCI archive unless ref is already there; True when it imported. Other tags of
        the same repository (earlier builds) are removed: containerd's store is kept between runs."""
        images = self.images()
        repo = ref.rsplit(":", 1)[0]
        stale = [i for i in images if i.rsplit(":", 1)[0] == repo and i != ref]
        if stale:
            self.ctr("images", "rm", *stale, check=False)
        if ref in images:
            return False
        self.ctr("images", "import", str(archive))
        if ref not in self.images():
            raise RuntimeError(f"importing {archive} did not give image {ref}: {sorted(self.images())}")
        return True

    # --- kubelet ----------------------------------------------------------------------------
    def kubelet_config(self) -> dict[str, object]:
        kdir = self.dir / "kubelet"
        resolv = kdir / "resolv.conf"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.sock}", "imageServiceEndpoint": f"unix://{self.sock}",
            "address": network.NODE_IP, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.kubelet_healthz_port,
            "tlsCertFile": str(self.serving_cert[0]), "tlsPrivateKeyFile": str(self.serving_cert[1]),
            "rotateCertificates": False, "serverTLSBootstrap": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.ca_cert)}},
            "authorization": {"mode": "Webhook"},
            # cluster DNS: CoreDNS on the node address (devcluster.dns)
            "clusterDomain": "cluster.local", "clusterDNS": [network.NODE_IP], "resolvConf": str(resolv),
            "podLogsDir": str(kdir / "pod-logs"), "maxPods": 110,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s", "registerNode": True,
        }  # fmt: skip

    def start_kubelet(self) -> None:
        kdir = self.dir / "kubelet"
        kdir.mkdir(parents=True, exist_ok=True)
        # dnsPolicy Default pods: the node address too (CoreDNS answers only cluster names), so no
        # lookup leaves the node
        (kdir / "resolv.conf").write_text(f"nameserver {network.NODE_IP}\n")
        (kdir / "config.yaml").write_text(yaml.safe_dump(self.kubelet_config(), sort_keys=False))
        kubeconfig = token_kubeconfig(kdir / "kubeconfig", self.server, self.ca_cert, f"system:node:{NODE_NAME}",
                                 self.tokens[f"system:node:{NODE_NAME}"])  # fmt: skip
        self._spawn("kubelet", [
            str(self.kube_bin / "kubelet"), "--config", str(kdir / "config.yaml"), "--kubeconfig", str(kubeconfig),
            "--hostname-override", NODE_NAME, "--node-ip", network.NODE_IP, "--root-dir", str(kdir / "root"),
            "--cert-dir", str(kdir / "pki"), "--containerd", str(self.sock), "--v", "1",
        ])  # fmt: skip

    # --- kube-proxy -------------------------------------------------------------------------
    def proxy_config(self) -> dict[str, object]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy" / "kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "mode": "nftables", "clusterCIDR": network.POD_CIDR, "nodePortAddresses": [f"{network.NODE_IP}/32"],
            "metricsBindAddress": f"127.0.0.1:{self.proxy_metrics_port}",
            "healthzBindAddress": f"127.0.0.1:{self.proxy_healthz_port}",
            # leave the host's conntrack sysctls alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }  # fmt: skip

    def _proxy_config(self) -> Path:
        pdir = self.dir / "kube-proxy"
        pdir.mkdir(parents=True, exist_ok=True)
        token_kubeconfig(pdir / "kubeconfig", self.server, self.ca_cert, "system:kube-proxy",
                    self.tokens["system:kube-proxy"])  # fmt: skip
        path = pdir / "config.yaml"
        path.write_text(yaml.safe_dump(self.proxy_config(), sort_keys=False))
        return path

    def start_kube_proxy(self) -> None:
        self._spawn("kube-proxy", [str(self.kube_bin / "kube-proxy"), "--config", str(self._proxy_config()),
                                   "--v", "1"])  # fmt: skip

    # --- common -----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        self.procs[name] = procs.spawn(argv, self.logs / f"{name}.log", env=self.env)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}: " + " | ".join(tail))

    def stop(self) -> list[str]:
        """Stop kube-proxy (and remove its rules), the kubelet, every container, containerd; unmount."""
        done: list[str] = []
        proxy = self.procs.pop("kube-proxy", None)
        if proxy is not None:
            procs.stop(proxy, grace=5.0)
            subprocess.run([str(self.kube_bin / "kube-proxy"), "--cleanup", "--config", str(self._proxy_config())],
                           capture_output=True, env=self.env, timeout=60)  # fmt: skip
            done.append("kube-proxy (rules cleaned up)")
        kubelet = self.procs.pop("kubelet", None)
        if kubelet is not None:
            procs.stop(kubelet, grace=5.0)
            done.append("kubelet")
        containerd = self.procs.pop("containerd", None)
        if containerd is not None:
            if containerd.poll() is None:
                self._clear_stale_containers()
            procs.stop(containerd, grace=10.0)
            done.append("containerd")
        done += self._kill_shims()
        done += self._unmount()
        done += _remove_cgroups()
        done += _remove_kubelet_chains()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return done

    def _kill_shims(self) -> list[str]:
        """containerd-shim-runc-v2 processes of our socket (they outlive containerd by design)."""
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(self.sock).encode() in cmdline:
                try:
                    os.kill(int(entry.name), 9)
                    killed.append(f"shim {entry.name}")
                except ProcessLookupError:
                    pass
        return killed

    def _unmount(self) -> list[str]:
        """Mounts under our folders (rootfs overlays, the kubelet's volume tmpfs), deepest first."""
        roots = (str(self.dir) + "/", str(self.run_dir) + "/", str(self.containerd_root) + "/")
        mounts = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(roots) or target + "/" in roots:
                mounts.append(target)
        done = []
        for target in sorted(set(mounts), key=len, reverse=True):
            for _ in range(3):
                if subprocess.run(["umount", target], capture_output=True).returncode == 0:
                    done.append(f"umount {target}")
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["umount", "-l", target], capture_output=True)
                done.append(f"umount -l {target}")
        return done


BASE_CHAINS = ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING")


def _remove_kubelet_chains() -> list[str]:
    """The kubelet's iptables-nft chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY, KUBE-FIREWALL and
    the base-chain jumps to it): a table is deleted only when everything in it is the kubelet's."""
    done = []
    for family in ("ip", "ip6"):
        for table in ("mangle", "filter", "nat"):
            proc = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True)
            if proc.returncode != 0:
                continue
            chain, ours = "", True
            for raw in proc.stdout.splitlines():
                line = raw.strip()
                if line.startswith("chain "):
                    chain = line.split()[1]
                    ours = ours and (chain.startswith("KUBE-") or chain in BASE_CHAINS)
                elif line and not line.startswith(("table ", "type ", "}", "#")) and not chain.startswith("KUBE-"):
                    ours = ours and "jump KUBE-" in line  # a rule of a base chain
            if ours:
                subprocess.run(["nft", "delete", "table", family, table], capture_output=True)
                done.append(f"nft table {family} {table} (the kubelet's chains)")
            else:
                done.append(f"nft table {family} {table} holds other rules: left alone")
    return done


def _remove_cgroups() -> list[str]:
    """The kubelet's `kubepods` cgroups in every hierarchy, deepest first (empty once tasks are gone)."""
    done = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
            done.append(f"cgroup {top}")
        except OSError:
            done.append(f"cgroup {top} still busy")
    return done
