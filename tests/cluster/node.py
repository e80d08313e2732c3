"""A real Kubernetes node on this machine, joined to a testbed control plane.

containerd + runc + the CNI bridge plugin (Debian packages), kubelet and kube-proxy (built from the
same Kubernetes module as the control plane by hack/testbed/build.sh), CoreDNS (its Go module, a
few plugins), kube-router's network policy controller as the NetworkPolicy enforcer (its Go module;
iptables + ipset), and images built by hack/images/build.py (pause, coredns, the project's own). Pods
are real processes: `kubectl logs/exec`, pod-to-pod traffic, ClusterIP Services, cluster DNS and
NetworkPolicy work.

    with ControlPlane(node_ip=host_ip()) as cp, RealNode(cp) as node:
        cp.kubectl("get", "nodes")          # realnode Ready, kwok-gpu-0 tainted
        node.images["runtime"]              # localhost/interlace-runtime:<tag>, loaded in containerd

Needs root (containerd, iptables, a bridge, network namespaces, mounts), on a machine that is not a
Kubernetes node itself (it owns cni0, `cni-*` network namespaces and the KUBE-*/CNI-* iptables chains
while it runs, and removes them when it stops). Every host change is
undone by stop(), also after a failed start: pods deleted (CNI tears their networking down), the
daemons stopped, leftover shims killed, mounts under the work dir unmounted, `cni-*` network
namespaces, the cni0 bridge, every KUBE-*/CNI-* iptables chain and KUBE-* ipset removed, and the sysctls put back
to their values before start(). Images stay in containerd's content store under
${INTERLACE_CACHE}/node/containerd (kept between runs, like the other caches): one run at a time uses
it (a lock file).

Traffic stays on this machine: the pod network 10.244.0.0/24 on cni0, Services in 10.96.0.0/16, the
apiserver on the host's own address. CoreDNS answers cluster.local only and forwards nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tests.cluster.testbed import (
    REPO_ROOT,
    Component,
    ControlPlane,
    TestbedError,
    free_port,
    read_versions,
    testbed_dir,
)

POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
DNS_IP = "10.96.0.10"
CNI_BIN = Path("/usr/lib/cni")
NODE_LABEL = ("interlace.dev/node-pool", "real")
# kubelet links every container's log here (a fixed path, unlike podLogsDir); removed on stop.
CONTAINER_LOGS = Path("/var/log/containers")
IMAGES = ("pause", "coredns", "operator", "runtime", "s3")
# Host settings the node needs, restored on stop.
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
HOST_PACKAGES = {"containerd": "containerd", "runc": "runc", "ctr": "containerd", "iptables": "iptables",
                 "ipset": "ipset", "conntrack": "conntrack", "mmdebstrap": "mmdebstrap"}
SERVICE_CIDR = "10.96.0.0/16"


def host_ip() -> str:
    """The address of this machine's default route (never a loopback one): the node's IP."""
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True,
                                       text=True, check=True).stdout or "[]")
    for r in routes:
        addrs = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", r["dev"]], capture_output=True,
                                          text=True, check=True).stdout or "[]")
        for a in addrs:
            for info in a.get("addr_info", []):
                if info.get("family") == "inet" and not str(info["local"]).startswith("127."):
                    return str(info["local"])
    raise TestbedError("no default route with an IPv4 address: the real node needs the host's own address")


def node_cache() -> Path:
    return testbed_dir().parent / "node"


def missing_host_tools() -> list[str]:
    """Debian packages the real node needs that are not installed (hack/system-deps.sh installs them)."""
    missing = {pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None}
    if not (CNI_BIN / "bridge").is_file():
        missing.add("containernetworking-plugins")
    return sorted(missing)


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


class RealNode:
    """One real node (name cp.node_name) joined to `cp`, which must have been made with node_ip."""

    def __init__(self, cp: ControlPlane, *, log: Callable[[str], None] | None = None):
        if not cp.node_ip:
            raise TestbedError("RealNode needs a ControlPlane(node_ip=...)")
        if os.geteuid() != 0:
            raise TestbedError("a real node needs root (containerd, iptables, bridges, mounts)")
        missing = missing_host_tools()
        if missing:
            raise TestbedError(f"the real node needs Debian packages: apt-get install -y {' '.join(missing)}")
        v = read_versions()
        self.node_bin = testbed_dir() / f"kubernetes-node-{v['K8S_VERSION']}"
        for b in ("kubelet", "kube-proxy"):
            if not (self.node_bin / b).is_file():
                raise TestbedError(f"{self.node_bin / b} is missing: bash hack/testbed/build.sh node coredns")
        self.kube_router = testbed_dir() / f"kube-router-{v['KUBE_ROUTER_VERSION']}" / "kube-router"
        if not self.kube_router.is_file():
            raise TestbedError(f"{self.kube_router} is missing: bash hack/testbed/build.sh kube_router")
        self.cp = cp
        self.name = cp.node_name
        self.dir = cp.workdir / "node"
        self.sock = self.dir / "run" / "containerd.sock"
        self.ports = {n: free_port() for n in ("kubelet", "kubelet_healthz", "proxy_metrics", "proxy_healthz",
                                                "router_health")}
        self._log = log or (lambda msg: None)
        self.images: dict[str, str] = {}
        self.components: dict[str, Component] = {}
        self._saved_sysctls: dict[str, str] = {}
        self._had_container_logs_dir = CONTAINER_LOGS.exists()
        self._lock_file: IO[str] | None = None
        self._started = self._stopped = False
        self.timings: dict[str, float] = {}

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ start

    def start(self, timeout: float = 600.0) -> RealNode:
        if self._started:
            return self
        self._started = True
        deadline = time.monotonic() + timeout
        steps: list[tuple[str, Callable[[], object]]] = [
            ("lock the containerd store", self._take_lock),
            ("host settings", self._host_settings),
            ("containerd", lambda: self._start_containerd(deadline)),
            ("images", self._load_images),
            ("kubelet, kube-proxy", self._start_node_daemons),
            ("node Ready", lambda: self._wait_ready(deadline)),
            ("NetworkPolicy enforcer", lambda: self._start_network_policy(deadline)),
            ("CoreDNS", lambda: self._start_coredns(deadline)),
        ]
        try:
            for label, step in steps:
                t = time.monotonic()
                step()
                self.timings[label] = time.monotonic() - t
                self._log(f"real node: {label}: {self.timings[label]:.1f}s")
        except BaseException:
            self.stop()
            raise
        return self

    def _take_lock(self) -> None:
        node_cache().mkdir(parents=True, exist_ok=True)
        self._lock_file = open(node_cache() / ".lock", "w")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TestbedError(
                f"another real node is running on this machine (lock {node_cache() / '.lock'}); "
                "one at a time can use the containerd store"
            ) from None

    def _host_settings(self) -> None:
        if not _sysctl_path("net.bridge.bridge-nf-call-iptables").exists() and shutil.which("modprobe"):
            subprocess.run(["modprobe", "br_netfilter"], check=False, capture_output=True)
        for key, value in SYSCTLS.items():
            path = _sysctl_path(key)
            if not path.exists():
                raise TestbedError(f"sysctl {key} does not exist (kernel module br_netfilter missing?)")
            self._saved_sysctls[key] = path.read_text().strip()
            path.write_text(value)

    def _spawn(self, name: str, args: Sequence[str | Path], env: dict[str, str] | None = None) -> Component:
        comp = Component(name, [str(a) for a in args], self.cp.workdir / "logs" / f"{name}.log", env=env)
        self.components[name] = comp
        comp.start()
        return comp

    def _write(self, rel: str, text: str) -> Path:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _containerd_config(self, pause_image: str) -> Path:
        root = node_cache() / "containerd"
        return self._write(
            "containerd.toml",
            f"""version = 2
root = "{root}"
state = "{self.dir / 'containerd-state'}"
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # The VM withholds CAP_SYS_RESOURCE: a negative oom_score_adj for sandboxes would be refused.
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
""",
        )

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-a", str(self.sock), "-n", "k8s.io", *args], capture_output=True,
                              text=True, check=check)

    def _start_containerd(self, deadline: float) -> None:
        # What a killed earlier run left (its shims would hold our store's snapshots). Only when a run
        # is recorded as unfinished: the host's own bridge, netns or KUBE-* rules (a developer machine
        # running its own Kubernetes) are never touched otherwise.
        marker = node_cache() / "unfinished-run"
        if marker.exists():
            clean_host()
        marker.write_text(str(self.dir))
        pause = self._build_images(["pause"])["pause"]
        self._write(
            "cni/net.d/10-interlace.conflist",
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "interlace-testbed",
                    "plugins": [
                        {
                            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.dir / "cni" / "ipam")},
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            ),
        )
        config = self._containerd_config(pause)
        self.sock.parent.mkdir(parents=True, exist_ok=True)
        self._spawn("containerd", ["containerd", "--config", config])
        self.cp.wait_for(
            lambda: self.sock.exists() and self._ctr("version", check=False).returncode == 0,
            timeout=max(1.0, deadline - time.monotonic()), what="containerd", check=self.check_running,
        )
        # Containers a crashed earlier run left in the kept store: none of them belongs to this run.
        for cid in self._ctr("containers", "ls", "-q", check=False).stdout.split():
            self._ctr("tasks", "kill", "-s", "KILL", cid, check=False)
            self._ctr("tasks", "rm", "-f", cid, check=False)
            self._ctr("containers", "rm", cid, check=False)

    def _build_images(self, names: list[str]) -> dict[str, str]:
        args = [sys.executable, str(REPO_ROOT / "hack" / "images" / "build.py"), *names]
        if self.sock.exists():
            args += ["--load", str(self.sock)]
        out = subprocess.run(args, capture_output=True, text=True)
        with open(self.cp.workdir / "logs" / "images.log", "a") as f:
            f.write(out.stderr)
        if out.returncode != 0:
            raise TestbedError(f"hack/images/build.py {' '.join(names)} failed:\n{out.stderr[-3000:]}")
        refs = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
        self.images.update(refs)
        return refs

    def _load_images(self) -> None:
        self._build_images(list(IMAGES))

    def _start_node_daemons(self) -> None:
        cp = self.cp
        kubelet_root = self.dir / "kubelet"
        (kubelet_root / "manifests").mkdir(parents=True, exist_ok=True)
        config = self._write(
            "kubelet.yaml",
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "cgroupDriver": "cgroupfs",
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.sock}",
                    "address": "0.0.0.0",
                    "port": self.ports["kubelet"],
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": self.ports["kubelet_healthz"],
                    "readOnlyPort": 0,
                    "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                                       "x509": {"clientCAFile": str(cp.client_ca)}},
                    "authorization": {"mode": "Webhook"},
                    "clusterDNS": [DNS_IP],
                    "clusterDomain": "cluster.local",
                    "staticPodPath": str(kubelet_root / "manifests"),
                    "serializeImagePulls": False,
                    # The images were built here and cannot be pulled again: never collect them.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    # Floors in bytes, not shares of the host's disk: this node shares a large disk
                    # with everything else on the machine (2% of 252 GB is 5 GB), and a disk-pressure
                    # eviction removes every image, pause included, after which no pod starts at all.
                    "evictionHard": {"memory.available": "200Mi", "nodefs.available": "1Gi",
                                     "imagefs.available": "1Gi"},
                    "maxPods": 60,
                    # Not /var/log/pods on the host (kubelet's default).
                    "podLogsDir": str(self.dir / "pod-logs"),
                    "volumePluginDir": str(self.dir / "volume-plugins"),
                    "resolvConf": str(self._write("resolv.conf", "nameserver 127.0.0.1\n")),
                    "registerWithTaints": [],
                }
            ),
        )
        self._spawn(
            "kubelet",
            [
                self.node_bin / "kubelet",
                f"--config={config}",
                f"--kubeconfig={cp.kubeconfig(f'system:node:{self.name}')}",
                f"--root-dir={kubelet_root}",
                f"--node-ip={cp.node_ip}",
                f"--hostname-override={self.name}",
                f"--node-labels={NODE_LABEL[0]}={NODE_LABEL[1]}",
                "--v=1",
            ],
        )
        proxy = self._write(
            "kube-proxy.yaml",
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(cp.kubeconfig("system:kube-proxy"))},
                    "mode": "iptables",
                    "clusterCIDR": CLUSTER_CIDR,
                    "hostnameOverride": self.name,
                    "bindAddress": "0.0.0.0",
                    "metricsBindAddress": f"127.0.0.1:{self.ports['proxy_metrics']}",
                    "healthzBindAddress": f"127.0.0.1:{self.ports['proxy_healthz']}",
                    "conntrack": {"maxPerCore": 0},
                }
            ),
        )
        self._spawn("kube-proxy", [self.node_bin / "kube-proxy", f"--config={proxy}", "--v=1"])

    def _start_network_policy(self, deadline: float) -> None:
        """kube-router's network policy controller only (no routing, no service proxy): it puts every
        local pod that a NetworkPolicy selects behind its own iptables chain fed by ipsets of the
        allowed peers. Traffic from the node itself (kubelet probes, the apiserver's proxy, which
        KubeRay uses to reach Ray heads) stays allowed, as with most enforcers."""
        self._spawn(
            "kube-router",
            [
                self.kube_router,
                f"--kubeconfig={self.cp.kubeconfig()}",
                f"--hostname-override={self.name}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--health-port={self.ports['router_health']}",
                "--metrics-port=0",
                "--v=1",
            ],
        )

        def healthy() -> bool:
            import urllib.request

            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['router_health']}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        self.cp.wait_for(healthy, timeout=max(1.0, deadline - time.monotonic()), interval=0.5,
                         what="kube-router's network policy controller healthy", check=self.check_running)

    def _wait_ready(self, deadline: float) -> None:
        def ready() -> bool:
            node = self.cp.kubectl_json("get", "node", self.name)
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"

        self.cp.wait_for(ready, timeout=max(1.0, deadline - time.monotonic()), interval=1.0,
                         what=f"node {self.name} Ready", check=self.check_running)

    def _start_coredns(self, deadline: float) -> None:
        image = self.images["coredns"]
        manifest = (Path(__file__).parent / "coredns.yaml").read_text().replace("${IMAGE}", image)
        self.cp.kubectl("apply", "-f", "-", input=manifest)
        self.cp.kubectl("-n", "kube-system", "rollout", "status", "deploy/coredns",
                        f"--timeout={int(max(1.0, deadline - time.monotonic()))}s",
                        timeout=max(1.0, deadline - time.monotonic()) + 5)

    # ------------------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and all(c.running for c in self.components.values())

    def check_running(self) -> None:
        self.cp.check_running()
        for c in self.components.values():
            c.check_running()

    def logs_report(self, lines: int = 20) -> str:
        return "\n".join(f"--- {n} ---\n{c.tail(lines)}" for n, c in self.components.items())

    # ------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Delete every pod, stop the daemons, undo every host change. Idempotent."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        kubelet = self.components.get("kubelet")
        if kubelet is not None and kubelet.running and self.cp.running:
            # Through the kubelet, so that CNI DEL removes each pod's veth, IP and iptables rules.
            with contextlib.suppress(Exception):
                self.cp.kubectl("delete", "rayjobs,rayclusters", "--all", "-A", "--wait=false", check=False)
                self.cp.kubectl("delete", "pods", "--all", "-A", "--grace-period=1", "--wait=true",
                                "--timeout=60s", check=False, timeout=75)
        for name in ("kube-router", "kube-proxy", "kubelet"):
            if name in self.components:
                self.components[name].stop()
        if "kube-router" in self.components:
            subprocess.run([str(self.kube_router), "--cleanup-config"], capture_output=True, check=False)
        if "kube-proxy" in self.components:
            subprocess.run([str(self.node_bin / "kube-proxy"), "--cleanup"], capture_output=True, check=False)
        if "containerd" in self.components and self.sock.exists():
            for cid in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
                self._ctr("tasks", "kill", "-s", "KILL", cid, check=False)
            time.sleep(0.5)
            for cid in self._ctr("containers", "ls", "-q", check=False).stdout.split():
                self._ctr("tasks", "rm", "-f", cid, check=False)
                self._ctr("containers", "rm", cid, check=False)
        if "containerd" in self.components:
            self.components["containerd"].stop()
        self._undo_host_changes()
        (node_cache() / "unfinished-run").unlink(missing_ok=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _undo_host_changes(self) -> None:
        clean_host(self.dir)
        for key, value in self._saved_sysctls.items():
            with contextlib.suppress(OSError):
                _sysctl_path(key).write_text(value)
        self._saved_sysctls.clear()
        if CONTAINER_LOGS.is_dir() and not self._had_container_logs_dir and not any(CONTAINER_LOGS.iterdir()):
            CONTAINER_LOGS.rmdir()


def _ours(path: str, workdir: Path | None) -> bool:
    """A path of this run's node (workdir) or of any testbed node run (workdir None: a crashed one)."""
    if workdir is not None and path.startswith(str(workdir) + "/"):
        return True
    return ("/interlace-testbed-" in path and "/node/" in path) or path.startswith(str(node_cache() / "containerd") + "/")


def clean_host(workdir: Path | None = None) -> None:
    """Undo what a real node does to the host: shims, mounts, pod network namespaces, the cni0 bridge,
    KUBE-*/CNI-* iptables chains, kubelet's log links. With workdir None, what any earlier testbed
    node left (a test run killed before its teardown): RealNode.start() calls it first."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"containerd-shim-runc-v2"):
                address = cmd[cmd.index(b"-address") + 1].decode() if b"-address" in cmd else ""
                if _ours(address, workdir):
                    os.kill(int(pid_dir.name), 9)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if _ours(m, workdir)), key=len, reverse=True):
        if subprocess.run(["umount", m], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", m], capture_output=True)
    netns = Path("/var/run/netns")
    if netns.is_dir():
        for ns in netns.iterdir():
            if ns.name.startswith("cni-"):
                subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)
    if subprocess.run(["ip", "link", "show", "cni0"], capture_output=True).returncode == 0:
        subprocess.run(["ip", "link", "delete", "cni0"], capture_output=True)
    remove_iptables_chains(("KUBE-", "CNI-"))
    for name in _ipsets():  # kube-router's (after its chains, which refer to them)
        subprocess.run(["ipset", "destroy", name], capture_output=True)
    if CONTAINER_LOGS.is_dir():
        for link in CONTAINER_LOGS.iterdir():
            if link.is_symlink() and _ours(os.readlink(link), workdir):
                link.unlink()


def remove_iptables_chains(prefixes: tuple[str, ...]) -> None:
    """Delete every rule that jumps to a chain with one of these prefixes, then the chains."""
    for ipt in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([ipt, "-t", table, "-S"], capture_output=True, text=True)
            if out.returncode != 0:
                continue
            chains = [line.split()[1] for line in out.stdout.splitlines()
                      if line.startswith("-N ") and line.split()[1].startswith(prefixes)]
            for line in out.stdout.splitlines():
                parts = shlex.split(line)  # comments are quoted: `--comment "name: ..."`
                if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1].startswith(prefixes):
                    subprocess.run([ipt, "-t", table, "-D", *parts[1:]], capture_output=True)
            for c in chains:
                subprocess.run([ipt, "-t", table, "-F", c], capture_output=True)
            for c in chains:
                subprocess.run([ipt, "-t", table, "-X", c], capture_output=True)


def _ipsets() -> list[str]:
    """The KUBE-* ipsets on the host (kube-router's KUBE-SRC-*/KUBE-DST-*, ...)."""
    if shutil.which("ipset") is None:
        return []
    out = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout
    return [n for n in out.split() if n.startswith(("KUBE-", "inet6:KUBE-"))]


def host_leftovers() -> list[str]:
    """What a real node leaves on the host if its teardown failed (empty list: nothing)."""
    left = []
    for ipt in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([ipt, "-t", table, "-S"], capture_output=True, text=True).stdout
            left += [f"{ipt} -t {table} {line}" for line in out.splitlines() if "KUBE-" in line or "CNI-" in line]
    if subprocess.run(["ip", "link", "show", "cni0"], capture_output=True).returncode == 0:
        left.append("link cni0")
    left += [f"ipset {n}" for n in _ipsets()]
    netns = Path("/var/run/netns")
    if netns.is_dir():
        left += [f"netns {n.name}" for n in netns.iterdir() if n.name.startswith("cni-")]
    if CONTAINER_LOGS.is_dir():
        left += [f"log link {p}" for p in CONTAINER_LOGS.iterdir() if "interlace-testbed-" in os.readlink(p)]
    left += [f"mount {m}" for m in (line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines())
             if _ours(m, None)]
    return left
