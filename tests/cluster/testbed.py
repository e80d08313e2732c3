"""A real Kubernetes control plane for tests, started from locally built binaries.

Components (all pinned in hack/testbed/versions.env, built by hack/testbed/build.sh):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake GPU nodes whose pods reach
Running without a kubelet) and the KubeRay operator run out of cluster; Kueue's controller joins them on
request (`ControlPlane(kueue=True)` or `cp.start_kueue()`, see Kueue below). Everything listens on
127.0.0.1 on free ports; state, keys, kubeconfigs and one log file per component live in a temp dir.

Stdlib only, so that `python tests/cluster/testbed.py up` (hack/testbed/up.sh) works with any Python.

    with ControlPlane() as cp:
        cp.kubectl("get", "nodes")
        ns = cp.create_namespace()
        sa_kubeconfig = cp.service_account_kubeconfig(ns, "default")
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "testbed" / "versions.env"
BUILD_COMMAND = "bash hack/testbed/build.sh"

# Labels of the fake GPU nodes, like a GPU node pool of a managed cluster. Tests may select on them.
GPU_NODE_POOL_LABELS = {
    "interlace.dev/node-pool": "gpu",
    "node.kubernetes.io/instance-type": "fake-a100-80gb-8x",
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    "nvidia.com/gpu.memory": "81920",
}
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
RESTRICTED_GROUP = "interlace:restricted"
FAKE_NODE_TAINT = "interlace.dev/fake-node"

T = TypeVar("T")


class TestbedError(RuntimeError):
    """The control plane could not be built, started or queried."""

    __test__ = False  # not a pytest test class


class KubectlError(TestbedError):
    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.cmd = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"kubectl {' '.join(args)} exited with {returncode}: {stderr.strip() or stdout.strip()}"
        )


# --------------------------------------------------------------------------- binaries


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip('"')
    return versions


def testbed_dir() -> Path:
    cache = os.environ.get("INTERLACE_CACHE") or Path.home() / ".cache" / "interlace"
    return Path(os.environ.get("INTERLACE_TESTBED_DIR") or Path(cache) / "testbed")


@dataclass(frozen=True)
class Binaries:
    """Paths of the pinned binaries (cache layout of hack/testbed/build.sh)."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    ray_operator: Path
    helm: Path
    kuberay_crd_dir: Path
    kueue: Path
    kueue_crd_dir: Path
    kueue_source: Path  # the module source (webhook manifests)

    @classmethod
    def locate(cls, root: Path | None = None, *, kuberay: str | None = None) -> Binaries:
        """The pinned binaries; `kuberay`: a KubeRay version other than KUBERAY_VERSION (the real
        node's KUBERAY_NEWEST_VERSION)."""
        root = Path(root) if root else testbed_dir()
        v = dict(read_versions())
        if kuberay:
            v["KUBERAY_VERSION"] = kuberay
        k8s = root / f"kubernetes-{v['K8S_VERSION']}"
        found = cls(
            etcd=root / f"etcd-{v['ETCD_VERSION']}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            kwok=root / f"kwok-{v['KWOK_VERSION']}" / "kwok",
            ray_operator=root / f"kuberay-{v['KUBERAY_VERSION']}" / "ray-operator",
            helm=root / f"helm-{v['HELM_VERSION']}" / "helm",
            kuberay_crd_dir=_gomodcache()
            / "github.com"
            / "ray-project"
            / "kuberay"
            / f"ray-operator@{v['KUBERAY_VERSION']}"
            / "config"
            / "crd"
            / "bases",
            kueue=root / f"kueue-{v['KUEUE_VERSION']}" / "kueue",
            kueue_crd_dir=root / f"kueue-{v['KUEUE_VERSION']}" / "crd",
            kueue_source=_gomodcache() / "sigs.k8s.io" / f"kueue@{v['KUEUE_VERSION']}",
        )
        return found

    def require(self, *names: str) -> Binaries:
        """Raise TestbedError naming every missing binary among `names` (default: all)."""
        names = names or tuple(n for n in self.__dict__ if not n.startswith("kueue"))
        missing = [str(getattr(self, n)) for n in names if not getattr(self, n).exists()]
        if missing:
            raise TestbedError(
                "control-plane binaries are missing (build them once with `"
                + BUILD_COMMAND
                + "`, ~tens of minutes cold, cached afterwards):\n  "
                + "\n  ".join(missing)
            )
        return self

    @property
    def path_dirs(self) -> list[str]:
        dirs = [str(p.parent) for p in (self.kubectl, self.helm, self.etcd, self.kwok, self.ray_operator)]
        return list(dict.fromkeys(dirs))


def _gomodcache() -> Path:
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    return Path(gopath.split(os.pathsep)[0]) / "pkg" / "mod"


# --------------------------------------------------------------------------- processes


_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_port_lock = threading.Lock()
_rng = secrets.SystemRandom()  # not `random`: a test that seeds it must not make two runs pick alike


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in _EPHEMERAL_FILE.read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999  # Linux default
    return lo, hi


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, chosen OUTSIDE the kernel's ephemeral range.

    A port from bind(("127.0.0.1", 0)) is an ephemeral one, and every outgoing connection (the
    apiserver's to etcd, the controllers' to the apiserver, ...) also takes its local port from that
    range: in the tens of seconds between choosing a port and a component binding it, a connection
    can take it ("bind: address already in use", seen once in CI). Ports below the range are never
    given to outgoing connections. A port is never handed out twice by one process.
    """
    lo, hi = _ephemeral_range()
    # 20000 and up: Ray's workers take ports from 10002-19999 (its default min/max_worker_port).
    candidates = range(20000, lo) if lo > 22000 else range(hi + 1, 65536)
    with _port_lock:
        for _ in range(500):
            port = _rng.choice(candidates)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise TestbedError(f"no free TCP port outside the ephemeral range {lo}-{hi} after 500 tries")


_LIBC = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded in the parent, not between fork and exec


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the parent dies (even by SIGKILL)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Component:
    """One child process in its own process group, logging to a file."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # own process group: stop() kills the whole group
                preexec_fn=_die_with_parent if _LIBC is not None else None,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_running(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise TestbedError(
                f"{self.name} exited with code {self.popen.returncode}; last log lines:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        pgid = self.popen.pid  # start_new_session: pgid == pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(wait)
                break
        # The leader may be gone while other members of its group survive: kill the rest.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-200_000:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- kubeconfigs


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def write_kubeconfig(
    path: Path, *, server: str, ca_pem: bytes, user: str, token: str, namespace: str | None = None
) -> Path:
    """A token kubeconfig usable by kubectl, client-go, the Python `kubernetes` client and kopf."""
    context = f"{user}@interlace-testbed"
    lines = [
        "apiVersion: v1",
        "kind: Config",
        "preferences: {}",
        "clusters:",
        "- name: interlace-testbed",
        "  cluster:",
        f"    server: {_yaml_str(server)}",
        f"    certificate-authority-data: {base64.b64encode(ca_pem).decode()}",
        "users:",
        f"- name: {_yaml_str(user)}",
        "  user:",
        f"    token: {_yaml_str(token)}",
        "contexts:",
        f"- name: {_yaml_str(context)}",
        "  context:",
        "    cluster: interlace-testbed",
        f"    user: {_yaml_str(user)}",
    ]
    if namespace:
        lines.append(f"    namespace: {_yaml_str(namespace)}")
    lines.append(f"current-context: {_yaml_str(context)}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _make_rsa_key(private: Path, public: Path) -> None:
    """RSA key for signing service-account tokens: openssl, else python `cryptography`."""
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "pkey", "-in", private, "-pubout", "-out", public], check=True, capture_output=True
        )
        return
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise TestbedError("need `openssl` or the python `cryptography` package to make keys") from e
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# --------------------------------------------------------------------------- the control plane


@dataclass(frozen=True)
class User:
    name: str
    token: str
    groups: tuple[str, ...]


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler (+ kwok, + KubeRay).

    `restricted_users` get a static token and only the group `interlace:restricted` (plus
    system:authenticated): no permissions until a test binds a Role to them.
    """

    ADMIN = "admin"

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        binaries: Binaries | None = None,
        restricted_users: Iterable[str] = ("alice", "bob"),
        kwok: bool = True,
        kuberay: bool = True,
        kueue: bool = False,
        gpu_nodes: int = 1,
        gpus_per_node: int = 8,
        log: Callable[[str], None] | None = None,
        extra_args: Mapping[str, Sequence[str]] | None = None,
        node_ip: str | None = None,
        node_name: str = "realnode",
    ):
        """`node_ip` set: the control plane of a real node (tests/cluster/node.py) on that host
        address. The apiserver then listens on every address and advertises node_ip, so pods reach it
        through the `kubernetes` Service; the Node authorizer and a kubelet client certificate are
        on; KubeRay reaches Ray heads through the apiserver's proxy (it runs outside the pod network);
        the fake GPU nodes are tainted so that only pods that tolerate them land there."""
        self.binaries = binaries or Binaries.locate()
        needed = ["etcd", "kube_apiserver", "kube_controller_manager", "kube_scheduler", "kubectl"]
        needed += ["kwok"] if kwok else []
        needed += ["ray_operator", "kuberay_crd_dir"] if kuberay else []
        needed += list(KUEUE_BINARIES) if kueue else []
        self.binaries.require(*needed)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="interlace-testbed-")).resolve()
        self.with_kwok = kwok
        self.with_kuberay = kuberay
        self.with_kueue = kueue
        self.kueue: Kueue | None = None
        self.gpu_nodes = gpu_nodes if kwok else 0
        self.gpus_per_node = gpus_per_node
        self.node_ip = node_ip
        self.node_name = node_name
        self._log = log or (lambda msg: None)
        # Extra command-line flags per component name (e.g. {"kube-apiserver": ["--feature-gates=..."]}).
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self.components: dict[str, Component] = {}
        self._users: dict[str, User] = {}
        self._kubeconfigs: dict[str, Path] = {}
        self._stopped = False
        self._started = False
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}

        for d in ("logs", "kubeconfigs", "pki", "etcd", "apiserver-certs", "kcm-certs", "scheduler-certs"):
            (self.workdir / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ports = {
            name: free_port()
            for name in (
                "etcd",
                "etcd_peer",
                "apiserver",
                "kcm",
                "scheduler",
                "kwok",
                "ray_metrics",
                "ray_probe",
            )
        }
        # With a real node the serving certificate names localhost, node_ip and the Service IP, not 127.0.0.1.
        host = "localhost" if node_ip else "127.0.0.1"
        self.server = f"https://{host}:{self.ports['apiserver']}"
        # The apiserver writes a self-signed serving cert + its CA here (--cert-dir); used as the CA.
        self.ca_file = self.workdir / "apiserver-certs" / "apiserver.crt"

        admin = User(self.ADMIN, secrets.token_hex(16), ("system:masters",))
        internal = [
            # Bootstrap RBAC binds these names to the system:kube-controller-manager / -scheduler roles.
            User("system:kube-controller-manager", secrets.token_hex(16), ()),
            User("system:kube-scheduler", secrets.token_hex(16), ()),
            User("interlace:kwok", secrets.token_hex(16), ("system:masters",)),
            User("interlace:kuberay-operator", secrets.token_hex(16), ("system:masters",)),
            User("interlace:kueue", secrets.token_hex(16), ("system:masters",)),
        ]
        if node_ip:
            internal += [
                User(f"system:node:{node_name}", secrets.token_hex(16), ("system:nodes",)),
                User("system:kube-proxy", secrets.token_hex(16), ()),
            ]
        restricted = [User(n, secrets.token_hex(16), (RESTRICTED_GROUP,)) for n in restricted_users]
        for u in (admin, *internal, *restricted):
            self._users[u.name] = u
        self.restricted_users = tuple(u.name for u in restricted)

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> ControlPlane:
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        steps: list[tuple[str, Callable[[], object]]] = [
            ("keys and tokens", self._prepare_files),
            ("etcd", lambda: self._start_etcd(deadline)),
            ("kube-apiserver", lambda: self._start_apiserver(deadline)),
            ("kubeconfigs", self._write_kubeconfigs),
            ("spawn controller-manager, scheduler", self._start_controllers),
        ]
        if self.with_kwok:
            steps.append(("spawn kwok", self._start_kwok))
        if self.with_kuberay:
            # ~3 MB of CRDs keep the apiserver busy for a while: sent in the background meanwhile.
            steps.append(("send KubeRay CRDs", self._send_kuberay_crds))
        steps.append(("controllers healthy", lambda: self._wait_controllers(deadline)))
        if self.with_kwok:
            steps.append(("fake GPU nodes Ready", lambda: self._create_gpu_nodes(deadline)))
        if self.with_kuberay:
            steps.append(("KubeRay CRDs established", lambda: self._wait_kuberay_crds(deadline)))
            steps.append(("spawn KubeRay operator", self._start_kuberay))
        steps.append(
            (
                "default ServiceAccount",
                lambda: self.wait_for(
                    lambda: self._exists("serviceaccount", "default", "default"),
                    timeout=self._left(deadline),
                    what="the default ServiceAccount (serviceaccount controller)",
                ),
            )
        )
        if self.with_kuberay:
            steps.append(
                (
                    "KubeRay operator ready",
                    lambda: self._wait_http(
                        "kuberay-operator", f"http://127.0.0.1:{self.ports['ray_probe']}/readyz", deadline
                    ),
                )
            )
        if self.with_kueue:
            steps.append(("Kueue", lambda: self.start_kueue(timeout=self._left(deadline))))
        try:
            for label, step in steps:
                t = time.monotonic()
                step()
                self.timings[label] = time.monotonic() - t
                self._log(f"{label}: {self.timings[label]:.1f}s")
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        self._log(f"control plane ready in {self.timings['start']:.1f}s ({self.server}, {self.workdir})")
        return self

    def stop(self) -> None:
        """Kill every component's process group (idempotent, safe from atexit)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.kueue is not None:
            self.kueue.component.stop()
        for comp in reversed(list(self.components.values())):
            comp.stop()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and all(c.running for c in self.components.values())

    def check_running(self) -> None:
        for comp in self.components.values():
            comp.check_running()

    # ----------------------------------------------------------------- startup steps

    @staticmethod
    def _left(deadline: float) -> float:
        return max(1.0, deadline - time.monotonic())

    def _spawn(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Component:
        args = [*args, *self.extra_args.get(name, ())]
        comp = Component(name, args, self.workdir / "logs" / f"{name}.log", env=env)
        self.components[name] = comp
        comp.start()
        self._log(f"started {name} (pid {comp.popen.pid if comp.popen else '?'})")
        return comp

    def _prepare_files(self) -> None:
        pki = self.workdir / "pki"
        self.sa_key, self.sa_pub = pki / "sa.key", pki / "sa.pub"
        _make_rsa_key(self.sa_key, self.sa_pub)
        rows = []
        for u in self._users.values():
            groups = ",".join(u.groups)
            rows.append(
                f'{u.token},{u.name},{u.name},"{groups}"' if groups else f"{u.token},{u.name},{u.name}"
            )
        self.token_file = pki / "tokens.csv"
        self.token_file.write_text("\n".join(rows) + "\n")
        self.token_file.chmod(0o600)
        if self.node_ip:
            self._make_kubelet_pki(pki)

    def _make_kubelet_pki(self, pki: Path) -> None:
        """A CA the kubelet trusts for client certificates, and the apiserver's client certificate
        (logs, exec, port-forward go from the apiserver to the kubelet)."""
        self.client_ca, ca_key = pki / "client-ca.crt", pki / "client-ca.key"
        self.kubelet_client_cert, self.kubelet_client_key = pki / "kubelet-client.crt", pki / "kubelet-client.key"
        csr = pki / "kubelet-client.csr"
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out",
            self.client_ca, "-days", "7", "-subj", "/CN=interlace-testbed-client-ca")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.kubelet_client_key, "-out", csr,
            "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        run("openssl", "x509", "-req", "-in", csr, "-CA", self.client_ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", self.kubelet_client_cert, "-days", "7")

    def _start_etcd(self, deadline: float) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                self.binaries.etcd,
                "--name=testbed",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testbed={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http("etcd", f"{client}/health", deadline, expect=lambda b: b'"health":"true"' in b)

    def _apiserver_network_args(self) -> list[str]:
        if not self.node_ip:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # Loopback addresses are not valid endpoints of the `kubernetes` Service.
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
            ]
        return [
            # Pods reach the apiserver through the `kubernetes` Service, whose endpoint is node_ip.
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.node_ip}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={self.kubelet_client_cert}",
            f"--kubelet-client-key={self.kubelet_client_key}",
            # The node's name is not in DNS: logs/exec go to its InternalIP.
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _start_apiserver(self, deadline: float) -> None:
        self._spawn(
            "kube-apiserver",
            [
                self.binaries.kube_apiserver,
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                *self._apiserver_network_args(),
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                f"--token-auth-file={self.token_file}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.sa_pub}",
                f"--service-account-signing-key-file={self.sa_key}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.wait_for(
            lambda: self.ca_file.exists() and self.ca_file.stat().st_size > 0,
            timeout=self._left(deadline),
            what="the apiserver's self-signed certificate",
            check=self.components["kube-apiserver"].check_running,
        )
        time.sleep(0.2)  # the cert file is written before the key; give it a moment
        self._wait_http(
            "kube-apiserver",
            f"{self.server}/readyz",
            deadline,
            token=self._users[self.ADMIN].token,
            cafile=self.ca_file,
            expect=lambda b: b.strip() == b"ok",
        )

    def _write_kubeconfigs(self) -> None:
        ca_pem = self.ca_file.read_bytes()
        self.ca_pem = ca_pem
        for u in self._users.values():
            fname = re.sub(r"[^A-Za-z0-9_.-]", "-", u.name) + ".kubeconfig"
            self._kubeconfigs[u.name] = write_kubeconfig(
                self.workdir / "kubeconfigs" / fname,
                server=self.server,
                ca_pem=ca_pem,
                user=u.name,
                token=u.token,
            )

    def _start_controllers(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                self.binaries.kube_controller_manager,
                f"--kubeconfig={self._kubeconfigs['system:kube-controller-manager']}",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount (tokens via TokenRequest), as in kubeadm.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.sa_key}",
                f"--root-ca-file={self.ca_file}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['kcm']}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--controllers=*",
                # Otherwise it creates /usr/libexec/kubernetes/kubelet-plugins/... on the host.
                f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                self.binaries.kube_scheduler,
                f"--kubeconfig={self._kubeconfigs['system:kube-scheduler']}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['scheduler']}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        key, value = KWOK_NODE_ANNOTATION
        self._spawn(
            "kwok",
            [
                self.binaries.kwok,
                f"--kubeconfig={self._kubeconfigs['interlace:kwok']}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
            ],
        )

    KUBERAY_CRDS = ("rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io")

    def _send_kuberay_crds(self) -> None:
        crds = sorted(self.binaries.kuberay_crd_dir.glob("*.yaml"))
        if not crds:
            raise TestbedError(f"no KubeRay CRDs in {self.binaries.kuberay_crd_dir}")
        # Too large for client-side apply's last-applied annotation: server-side apply.
        args = [str(self.binaries.kubectl), "apply", "--server-side", "--force-conflicts"]
        for f in crds:
            args += ["-f", str(f)]
        self._crd_log = self.workdir / "logs" / "kuberay-crds.log"
        with open(self._crd_log, "wb") as log:
            self._crd_proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env()
            )

    def _wait_kuberay_crds(self, deadline: float) -> None:
        try:
            rc = self._crd_proc.wait(self._left(deadline))
        except subprocess.TimeoutExpired:
            self._crd_proc.kill()
            raise TestbedError("timed out installing the KubeRay CRDs") from None
        if rc != 0:
            raise TestbedError(f"installing the KubeRay CRDs failed:\n{self._crd_log.read_text()[-3000:]}")
        self.wait_crds_established(*self.KUBERAY_CRDS, timeout=self._left(deadline))

    def wait_crds_established(self, *names: str, timeout: float = 60.0) -> None:
        """Poll until every CRD is Established. Not `kubectl wait --for=condition=Established`: that
        errors out ("accessor error: <nil>") instead of waiting while a CRD's conditions are still null
        (seen on a loaded machine)."""

        def established() -> bool:
            for name in names:
                conds = (self.kubectl_json("get", "crd", name).get("status") or {}).get("conditions") or []
                if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                    return False
            return True

        self.wait_for(established, timeout=timeout, interval=0.5, what=f"CRDs {', '.join(names)} Established")

    def _start_kuberay(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self._kubeconfigs["interlace:kuberay-operator"]))
        self._spawn(
            "kuberay-operator",
            [
                self.binaries.ray_operator,
                "--enable-leader-election=false",
                f"--metrics-addr=127.0.0.1:{self.ports['ray_metrics']}",
                f"--health-probe-bind-address=127.0.0.1:{self.ports['ray_probe']}",
                "--log-stdout-encoder=console",
                # Out of the cluster, KubeRay cannot resolve <head>-svc.<ns>.svc names: it reaches
                # the Ray dashboard of each head through the apiserver's service proxy instead.
                *(["--use-kubernetes-proxy"] if self.node_ip else []),
            ],
            env=env,
        )

    # ----------------------------------------------------------------- Kueue (opt-in)

    def start_kueue(self, timeout: float = 120.0) -> Kueue:
        """Start Kueue's controller beside the running control plane (idempotent); see `Kueue`."""
        if self.kueue is None:
            self.binaries.require(*KUEUE_BINARIES)
            kueue = Kueue(self)
            try:
                kueue.start(timeout)
            except BaseException:
                kueue.stop()
                raise
            self.kueue = kueue
        return self.kueue

    def stop_kueue(self) -> None:
        """Stop Kueue and remove its webhook configurations and queues, so the control plane behaves
        as without it (its CRDs stay: no controller acts on them)."""
        if self.kueue is not None:
            self.kueue.stop()
            self.kueue = None

    def _wait_controllers(self, deadline: float) -> None:
        for name in ("kcm", "scheduler"):
            comp = "kube-controller-manager" if name == "kcm" else "kube-scheduler"
            self._wait_http(comp, f"https://127.0.0.1:{self.ports[name]}/healthz", deadline, insecure=True)
        if self.with_kwok:
            self._wait_http("kwok", f"http://127.0.0.1:{self.ports['kwok']}/healthz", deadline)

    def _create_gpu_nodes(self, deadline: float) -> None:
        names = [f"kwok-gpu-{i}" for i in range(self.gpu_nodes)]
        self.apply([self.gpu_node_manifest(n) for n in names])
        for n in names:
            self.kubectl(
                "wait",
                "--for=condition=Ready",
                f"node/{n}",
                f"--timeout={int(self._left(deadline))}s",
                timeout=self._left(deadline) + 5,
            )
        self.gpu_node_names = names

    def gpu_node_manifest(self, name: str) -> dict[str, Any]:
        resources = {
            "cpu": "96",
            "memory": "1Ti",
            "ephemeral-storage": "2Ti",
            "pods": "250",
            "nvidia.com/gpu": str(self.gpus_per_node),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                    "type": "kwok",
                    "nvidia.com/gpu.count": str(self.gpus_per_node),
                    **GPU_NODE_POOL_LABELS,
                },
            },
            # Beside a real node, only pods that tolerate this taint are placed on a fake node.
            "spec": {"taints": [{"key": FAKE_NODE_TAINT, "value": "true", "effect": "NoSchedule"}]}
            if self.node_ip
            else {},
            "status": {
                "allocatable": resources,
                "capacity": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                    "containerRuntimeVersion": "kwok",
                    "osImage": "kwok",
                    "kernelVersion": "kwok",
                    "machineID": name,
                    "systemUUID": name,
                    "bootID": name,
                },
            },
        }

    # ----------------------------------------------------------------- waiting

    def wait_for(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float = 60.0,
        interval: float = 0.25,
        what: str = "condition",
        check: Callable[[], None] | None = None,
    ) -> T:
        """Poll `predicate` until it returns a truthy value (returned). Exceptions count as not yet."""
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            (check or self.check_running)()
            try:
                value = predicate()
                if value:
                    return value
            except (TestbedError, OSError, ValueError) as e:
                last_exc = e
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_exc})" if last_exc else ""
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(interval)

    def _wait_http(
        self,
        component: str,
        url: str,
        deadline: float,
        *,
        token: str | None = None,
        cafile: Path | None = None,
        insecure: bool = False,
        expect: Callable[[bytes], bool] | None = None,
    ) -> None:
        ctx = None
        if url.startswith("https"):
            ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE

        def probe() -> bool:
            req = urllib.request.Request(url)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                    body = resp.read()
                    return resp.status == 200 and (expect is None or expect(body))
            except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
                return False

        comp = self.components[component]
        try:
            self.wait_for(
                probe, timeout=self._left(deadline), what=f"{component} at {url}", check=comp.check_running
            )
        except TimeoutError as e:
            raise TestbedError(f"{e}; last log lines of {component}:\n{comp.tail()}") from None

    def _exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        args = ["get", kind, name, "-o", "name", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        return bool(self.kubectl(*args).stdout.strip())

    # ----------------------------------------------------------------- users and kubeconfigs

    @property
    def admin_kubeconfig(self) -> Path:
        return self._kubeconfigs[self.ADMIN]

    def kubeconfig(self, user: str = ADMIN) -> Path:
        """Kubeconfig of a static-token user (admin or one of `restricted_users`)."""
        try:
            return self._kubeconfigs[user]
        except KeyError:
            raise KeyError(f"no static user {user!r}; known: {sorted(self._kubeconfigs)}") from None

    def token(self, user: str = ADMIN) -> str:
        return self._users[user].token

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        duration: str = "2h",
        audience: str | None = None,
        create: bool = False,
    ) -> Path:
        """Kubeconfig that acts AS a ServiceAccount, with a token from the TokenRequest API."""
        if create:
            self.kubectl("create", "serviceaccount", name, "-n", namespace)
        args = ["create", "token", name, "-n", namespace, f"--duration={duration}"]
        if audience:
            args.append(f"--audience={audience}")
        token = self.kubectl(*args).stdout.strip()
        path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        return write_kubeconfig(
            path, server=self.server, ca_pem=self.ca_pem, user=user, token=token, namespace=namespace
        )

    def env(self, kubeconfig: str | Path | None = None) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, the pinned kubectl/helm first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.admin_kubeconfig)
        env["PATH"] = os.pathsep.join([*self.binaries.path_dirs, env.get("PATH", "")])
        return env

    # ----------------------------------------------------------------- kubectl / helm

    def kubectl(
        self,
        *args: str,
        kubeconfig: str | Path | None = None,
        user: str | None = None,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl (as admin unless `user` or `kubeconfig` is given)."""
        return self._run(
            self.binaries.kubectl,
            args,
            kubeconfig=kubeconfig,
            user=user,
            input=input,
            check=check,
            timeout=timeout,
        )

    def helm(
        self, *args: str, kubeconfig: str | Path | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        self.binaries.require("helm")
        home = self.workdir / "helm"
        extra = {
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        return self._run(
            self.binaries.helm, args, kubeconfig=kubeconfig, check=check, timeout=timeout, extra_env=extra
        )

    def _run(
        self,
        binary: Path,
        args: Sequence[str],
        *,
        kubeconfig: str | Path | None = None,
        user: str | None = None,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 60.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if kubeconfig is None:
            kubeconfig = self.kubeconfig(user or self.ADMIN)
        env = self.env(kubeconfig)
        env.update(extra_env or {})
        if isinstance(input, bytes):
            input = input.decode()
        proc = subprocess.run(
            [str(binary), *map(str, args)],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(list(map(str, args)), proc.returncode, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", **kwargs).stdout)

    def apply(
        self,
        objs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        server_side: bool = True,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply` one object or a list (as a v1 List), server-side by default."""
        doc = objs if isinstance(objs, Mapping) else {"apiVersion": "v1", "kind": "List", "items": list(objs)}
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--field-manager=interlace-tests"]
        if namespace:
            args += ["-n", namespace]
        return self.kubectl(*args, input=json.dumps(doc), **kwargs)

    def create(self, obj: Mapping[str, Any], *, namespace: str | None = None, **kwargs: Any) -> Any:
        """`kubectl create` one object; returns the created object."""
        args = ["create", "-f", "-", "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args, input=json.dumps(obj), **kwargs).stdout)

    # ----------------------------------------------------------------- namespaces and pods

    def create_namespace(
        self, name: str | None = None, *, prefix: str = "t", labels: Mapping[str, str] | None = None
    ) -> str:
        """Create a namespace and wait until its `default` ServiceAccount exists (pods need it)."""
        if name is None:
            prefix = re.sub(r"[^a-z0-9-]", "-", prefix.lower()).strip("-")[:40] or "t"
            name = f"{prefix}-{secrets.token_hex(3)}"
        self.create(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})},
            }
        )
        self.wait_for(
            lambda: self._exists("serviceaccount", "default", name),
            timeout=60,
            what=f"ServiceAccount default in namespace {name}",
        )
        return name

    def delete_namespace(self, name: str, *, wait: bool = False, timeout: float = 120.0) -> None:
        self.kubectl(
            "delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}", timeout=timeout
        )

    def wait_for_pods(
        self,
        namespace: str,
        selector: str,
        *,
        count: int,
        phase: str = "Running",
        timeout: float = 120.0,
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` pods matching `selector` are in `phase`; returns them."""

        def ready() -> list[dict[str, Any]] | None:
            pods = self.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
            good = [p for p in pods if p.get("status", {}).get("phase") == phase]
            return good if len(good) >= count else None

        try:
            return self.wait_for(
                ready, timeout=timeout, interval=0.5, what=f"{count} {phase} pods {selector!r}"
            )
        except TimeoutError as e:
            pods = self.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
            events = self.kubectl("get", "events", "-n", namespace, check=False).stdout
            raise TimeoutError(f"{e}\npods:\n{pods}\nevents:\n{events}") from None

    # ----------------------------------------------------------------- diagnostics

    def log_tail(self, component: str, lines: int = 40) -> str:
        return self.components[component].tail(lines)

    def logs_report(self, lines: int = 25) -> str:
        parts = [f"control plane workdir: {self.workdir}"]
        for name, comp in self.components.items():
            state = "running" if comp.running else f"exited {comp.popen.returncode if comp.popen else '?'}"
            parts.append(f"----- {name} ({state}) {comp.log_path}\n{comp.tail(lines)}")
        return "\n".join(parts)

    def python_client(self, kubeconfig: str | Path | None = None) -> Any:
        """A `kubernetes.client.ApiClient` for a kubeconfig (admin by default)."""
        from kubernetes import config  # imported lazily: the module itself is stdlib-only

        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))


# --------------------------------------------------------------------------- Kueue

KUEUE_BINARIES = ("kueue", "kueue_crd_dir", "kueue_source")
KUEUE_NAMESPACE = "kueue-system"
# The integrations the testbed enables (Kueue's Configuration integrations.frameworks).
KUEUE_FRAMEWORKS = ("ray.io/rayjob",)
# CRDs that Kueue's own manifests (config/components/crd/kustomization.yaml) give a conversion webhook.
KUEUE_CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
KUEUE_FLAVOR = "default-flavor"


class Kueue:
    """Kueue's controller manager as a host process next to KubeRay, with real admission webhooks.

    In a cluster Kueue's webhooks are a Service in kueue-system with a certificate Kueue makes itself
    (internalCertManagement). Here the controller runs on the host, so: internalCertManagement is off,
    the webhook server listens on 127.0.0.1 with a self-signed certificate for that address (made with
    openssl), and the webhook configurations and CRD conversion webhooks of Kueue's own manifests
    (config/components/webhook/manifests.yaml; the CRDs from config/components/crd/bases, cached by
    hack/testbed/build.sh) point at `url: https://127.0.0.1:<port>/<path>` with that certificate as
    caBundle. Only the webhooks of Kueue's own kinds and of the enabled integrations
    (KUEUE_FRAMEWORKS: ray.io/rayjob) are registered. Kueue runs with a system:masters token.

    After start: the ResourceFlavor KUEUE_FLAVOR exists (created through Kueue's webhook, which proves
    the webhooks answer); `queue(namespace, ...)` makes a ClusterQueue + LocalQueue for a test.
    """

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.dir = cp.workdir / "kueue"
        self.cert_dir = self.dir / "certs"
        self.cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ports = {"webhook": free_port(), "health": free_port(), "metrics": free_port()}
        self.url = f"https://127.0.0.1:{self.ports['webhook']}"
        self.component = Component("kueue", [], cp.workdir / "logs" / "kueue.log")  # replaced in start()
        self.webhook_configs: list[tuple[str, str]] = []
        self.queues: list[str] = []
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 120.0) -> Kueue:
        deadline = time.monotonic() + timeout
        steps: list[tuple[str, Callable[[], object]]] = [
            ("Kueue certificate", self._make_cert),
            ("Kueue CRDs", lambda: self._install_crds(deadline)),
            ("Kueue controller", lambda: self._start_controller(deadline)),
            ("Kueue webhooks", lambda: self._register_webhooks(deadline)),
        ]
        for label, step in steps:
            t = time.monotonic()
            step()
            self.timings[label] = time.monotonic() - t
            self.cp._log(f"{label}: {self.timings[label]:.1f}s")
        return self

    def stop(self) -> None:
        """Delete the webhook configurations first (with Kueue gone, failurePolicy Fail would refuse
        every RayJob), then the queues, then stop the controller."""
        if self.cp.components["kube-apiserver"].running:
            for kind, name in self.webhook_configs:
                self.cp.kubectl("delete", kind, name, "--ignore-not-found", check=False)
            for cq in self.queues:
                self.cp.kubectl("delete", "clusterqueue", cq, "--ignore-not-found", "--wait=false", check=False)
        self.component.stop()
        self.cp.components.pop("kueue", None)

    def check_running(self) -> None:
        self.component.check_running()

    # ----------------------------------------------------------------- steps

    def _make_cert(self) -> None:
        """A self-signed serving certificate for 127.0.0.1 (IP SAN): Kueue reads tls.crt/tls.key from
        webhook.certDir; the same certificate is the caBundle of every webhook."""
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
             "-keyout", self.cert_dir / "tls.key", "-out", self.cert_dir / "tls.crt",
             "-subj", "/CN=kueue-webhook.127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True,
        )
        self.ca_bundle = base64.b64encode((self.cert_dir / "tls.crt").read_bytes()).decode()

    def _client_config(self, path: str) -> dict[str, str]:
        return {"url": self.url + path, "caBundle": self.ca_bundle}

    def _as_json(self, *files: Path) -> list[dict[str, Any]]:
        """Kueue's YAML manifests as objects (kubectl parses them: testbed.py is stdlib-only)."""
        args = ["create", "--dry-run=client", "-o", "json"]
        for f in files:
            args += ["-f", str(f)]
        text, objs, pos = self.cp.kubectl(*args, timeout=120).stdout, [], 0
        decoder = json.JSONDecoder()
        while (pos := len(text) - len(text[pos:].lstrip())) < len(text):  # one JSON document per object
            obj, pos = decoder.raw_decode(text, pos)
            objs += obj.get("items", []) if obj.get("kind") == "List" else [obj]
        return objs

    def _install_crds(self, deadline: float) -> None:
        crds = self._as_json(*sorted(self.cp.binaries.kueue_crd_dir.glob("*.yaml")))
        for crd in crds:
            if crd["spec"]["names"]["plural"] in KUEUE_CONVERTED_CRDS:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {"clientConfig": self._client_config("/convert"), "conversionReviewVersions": ["v1"]},
                }
        # (large: server-side apply, like the KubeRay CRDs)
        for crd in crds:
            self.cp.apply(crd, timeout=self.cp._left(deadline))
        self.cp.wait_crds_established(*(c["metadata"]["name"] for c in crds), timeout=self.cp._left(deadline))
        if not self.cp._exists("namespace", KUEUE_NAMESPACE):
            self.cp.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}})

    def config(self) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": KUEUE_NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['metrics']}"},
            "webhook": {"host": "127.0.0.1", "port": self.ports["webhook"], "certDir": str(self.cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": list(KUEUE_FRAMEWORKS)},
            # The visibility API is an aggregated API server (APIService -> Service): not reachable here.
            "featureGates": {"VisibilityOnDemand": False},
        }

    def _start_controller(self, deadline: float) -> None:
        config = self.dir / "config.yaml"
        config.write_text(json.dumps(self.config(), indent=2) + "\n")  # JSON is YAML
        env = dict(os.environ, KUBECONFIG=str(self.cp.kubeconfig("interlace:kueue")))
        # With internalCertManagement off, Kueue v0.17 reads its metrics serving certificate from the
        # fixed path /etc/kueue/metrics/certs (cmd/kueue/main.go; no flag or setting). Nothing is
        # written to the host's /etc: Kueue runs in a private mount namespace whose /etc is a tmpfs
        # holding only that directory (a static Go binary that reaches the apiserver by IP needs
        # nothing else from /etc).
        if not _can_unshare_mounts():
            raise TestbedError(
                "Kueue needs its metrics certificate at /etc/kueue/metrics/certs; the testbed mounts it in "
                "a private mount namespace (`unshare --mount`, root or CAP_SYS_ADMIN), which is not "
                "available here"
            )
        script = (
            'set -e; mount -t tmpfs -o mode=0755 interlace-kueue-etc /etc; mkdir -p "$2"; '
            'cp "$1/tls.crt" "$1/tls.key" "$2/"; shift 2; exec "$@"'
        )
        self.component = self.cp._spawn(
            "kueue",
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "kueue-etc",
             self.cert_dir, "/etc/kueue/metrics/certs",
             self.cp.binaries.kueue, f"--config={config}", "--zap-log-level=2"],
            env=env,
        )
        self.cp._wait_http("kueue", f"http://127.0.0.1:{self.ports['health']}/readyz", deadline)

    def _register_webhooks(self, deadline: float) -> None:
        """Kueue's webhook configurations, limited to its own kinds and the enabled integrations,
        pointing at the host process; then a ResourceFlavor created through them."""
        manifests = self.cp.binaries.kueue_source / "config" / "components" / "webhook" / "manifests.yaml"
        enabled = {tuple(f.split("/")) for f in KUEUE_FRAMEWORKS}  # ("ray.io", "rayjob")
        for cfg in self._as_json(manifests):
            hooks = []
            for hook in cfg.get("webhooks") or []:
                rules = hook.get("rules") or []
                groups = {g for r in rules for g in r.get("apiGroups", [])}
                kinds = {(g, res.rstrip("s")) for r in rules for g in r.get("apiGroups", []) for res in r["resources"]}
                if groups != {"kueue.x-k8s.io"} and not kinds <= enabled:
                    continue
                hook["clientConfig"] = self._client_config(hook["clientConfig"]["service"]["path"])
                hooks.append(hook)
            name = "kueue-" + cfg["metadata"]["name"]
            cfg["metadata"] = {"name": name}
            cfg["webhooks"] = hooks
            self.cp.apply(cfg)
            self.webhook_configs.append((cfg["kind"].lower(), name))
        # The configurations take effect a moment after they are written (the apiserver's informer):
        # wait until Kueue's RayJob webhook suspends a queued RayJob (a server-side dry run).
        self.cp.wait_for(
            self._rayjob_webhook_answers, timeout=self.cp._left(deadline),
            what="Kueue's RayJob webhook to suspend a queued RayJob", check=self.check_running,
        )
        self.cp.apply(
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": KUEUE_FLAVOR}}
        )

    def _rayjob_webhook_answers(self) -> bool:
        probe = {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": "kueue-webhook-probe", "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
            "spec": {
                "entrypoint": "true",
                "suspend": False,
                "shutdownAfterJobFinishes": True,
                "rayClusterSpec": {
                    "headGroupSpec": {
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [
                            {"name": "ray-head", "image": "ray", "resources": {"requests": {"cpu": "1"}}}
                        ]}},
                    }
                },
            },
        }
        out = self.cp.kubectl(
            "create", "--dry-run=server", "-n", "default", "-f", "-", "-o", "json", input=json.dumps(probe)
        )
        return json.loads(out.stdout)["spec"].get("suspend") is True

    # ----------------------------------------------------------------- queues

    def queue(
        self,
        namespace: str,
        name: str = "gpu",
        *,
        quota: Mapping[str, str] | None = None,
        cluster_queue: str | None = None,
    ) -> str:
        """A ClusterQueue (default quota: 2 nvidia.com/gpu, 64 cpu, 256Gi memory in KUEUE_FLAVOR)
        admitting from `namespace` only, and a LocalQueue `name` in it. Returns the LocalQueue's name."""
        quota = dict(quota or {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "2"})
        cq = cluster_queue or f"{namespace}-{name}"
        self.cp.apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": cq},
                "spec": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "resourceGroups": [
                        {
                            "coveredResources": sorted(quota),
                            "flavors": [
                                {
                                    "name": KUEUE_FLAVOR,
                                    "resources": [{"name": r, "nominalQuota": q} for r, q in sorted(quota.items())],
                                }
                            ],
                        }
                    ],
                },
            }
        )
        self.queues.append(cq)
        self.cp.apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterQueue": cq},
            }
        )

        def active() -> bool:
            conds = (self.cp.kubectl_json("get", "clusterqueue", cq).get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Active" and c.get("status") == "True" for c in conds)

        self.cp.wait_for(active, timeout=60, what=f"ClusterQueue {cq} Active", check=self.check_running)
        return name


def _can_unshare_mounts() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


# --------------------------------------------------------------------------- CLI (hack/testbed/up.sh)


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the control plane and stay in the foreground until Ctrl-C")
    up.add_argument("--workdir", help="state/log directory (default: a new temp dir)")
    up.add_argument("--no-kuberay", action="store_true")
    up.add_argument("--no-kwok", action="store_true")
    up.add_argument("--kueue", action="store_true", help="also run Kueue (hack/testbed/build.sh kueue)")
    up.add_argument("--gpu-nodes", type=int, default=1)
    up.add_argument("--keep", action="store_true", help="keep the temp dir (logs, kubeconfigs) on exit")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also run a real node on this machine (root: kubelet, containerd, CNI, kube-proxy, CoreDNS) "
        "with the images of hack/images/build.py loaded; the fake GPU nodes are then tainted",
    )
    sub.add_parser("paths", help="print the binaries' paths")
    args = parser.parse_args(argv)

    if args.cmd == "paths":
        for key, value in Binaries.locate().__dict__.items():
            print(f"{key}={value}{'' if value.exists() else '  (missing)'}")
        return 0

    def say(msg: str) -> None:
        print(f"[testbed] {msg}", file=sys.stderr, flush=True)

    node: Any = None
    if args.real_node:
        sys.path.insert(0, str(REPO_ROOT))
        from tests.cluster.node import RealNode, host_ip

        cp = ControlPlane(args.workdir, kwok=not args.no_kwok, kuberay=not args.no_kuberay,
                          gpu_nodes=args.gpu_nodes, log=say, node_ip=host_ip())
        node = RealNode(cp, log=say)
    else:
        cp = ControlPlane(
            args.workdir, kwok=not args.no_kwok, kuberay=not args.no_kuberay, kueue=args.kueue,
            gpu_nodes=args.gpu_nodes, log=say,
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cp.start()
        if node is not None:
            node.start()
            say(f"real node {node.name} Ready; images: " + ", ".join(f"{k}={v}" for k, v in node.images.items()))
        path = ":".join(cp.binaries.path_dirs)
        env_file = cp.workdir / "env.sh"
        env_file.write_text(f"export KUBECONFIG={cp.admin_kubeconfig}\nexport PATH={path}:$PATH\n")
        users = "\n".join(f"#   {u}: {cp.kubeconfig(u)}" for u in cp.restricted_users)
        print(
            f"# control plane up: {cp.server} (logs: {cp.workdir / 'logs'})\n"
            f"# restricted users (group {RESTRICTED_GROUP}, no RBAC until you bind a Role):\n{users}\n"
            f"export KUBECONFIG={cp.admin_kubeconfig}\n"
            f"export PATH={path}:$PATH\n"
            f"# (also in {env_file}: `source {env_file}`). Ctrl-C stops everything.",
            flush=True,
        )
        while not stop.wait(2.0):
            cp.check_running()
            if node is not None:
                node.check_running()
    except (TestbedError, TimeoutError) as e:
        say(f"{e}\n{cp.logs_report()}\n{node.logs_report() if node else ''}\nlogs kept in {cp.workdir}")
        if node is not None:
            node.stop()
        cp.stop()
        return 1
    say("stopping")
    if node is not None:
        node.stop()
    cp.stop()
    if args.workdir or args.keep:
        say(f"logs and kubeconfigs kept in {cp.workdir}")
    else:
        shutil.rmtree(cp.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
