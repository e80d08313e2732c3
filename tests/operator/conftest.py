"""Fixtures for operator tests against the real control plane (tests/cluster).

* `prunejob_crd`: the generated CRD (manifests/base/crd.yaml) applied once per session;
* `operator_kubeconfig`: a ServiceAccount bound to a ClusterRole made of exactly
  `interlace_operator.rbac.RULES`, so every operator test also proves those rules are sufficient;
* `run_operator`: starts `python -m interlace_operator` as a subprocess (the real entry point, killable
  with SIGKILL like a crashed pod), watching the test's namespace only.

The operator adds no finalizers (owner references + garbage collection do the cleanup), so a test
namespace can always be deleted, even after the operator was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interlace_operator.rbac import cluster_role

from tests.cluster.testbed import free_port

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "base" / "crd.yaml"
RUNTIME_IMAGE = "registry.test/interlace-runtime:test"


def wait_for(fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="session")
def prunejob_crd(control_plane: Any) -> str:
    control_plane.kubectl("apply", "--server-side", "--field-manager=interlace-tests", "-f", str(CRD_FILE))

    def established() -> bool:
        # (not `kubectl wait`: it errors out instead of waiting while .status.conditions is still null)
        crd = control_plane.kubectl_json("get", "crd", "prunejobs.interlace.dev")
        conds = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    wait_for(established, timeout=60, what="the PruneJob CRD to be Established")
    return "prunejobs.interlace.dev"


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: Any, prunejob_crd: str) -> Path:
    """Kubeconfig of ServiceAccount interlace-operator bound to exactly interlace_operator.rbac.RULES."""
    ns = control_plane.create_namespace(prefix="interlace-system")
    role = cluster_role("interlace-operator-test")
    control_plane.apply(role)
    control_plane.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "interlace-operator-test"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
            "subjects": [{"kind": "ServiceAccount", "name": "interlace-operator", "namespace": ns}],
        }
    )
    return control_plane.service_account_kubeconfig(ns, "interlace-operator", create=True, duration="4h")


class OperatorProcess:
    """`python -m interlace_operator` in its own process group, logging to a file."""

    def __init__(self, kubeconfig: Path, namespaces: str, log_path: Path, env: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log_path = log_path
        self.extra_env = env
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        env = dict(os.environ)
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "INTERLACE_WATCH_NAMESPACES": self.namespaces,
                "INTERLACE_METRICS_PORT": str(self.metrics_port),
                "INTERLACE_HEALTH_PORT": str(self.health_port),
                "INTERLACE_RUNTIME_IMAGE": RUNTIME_IMAGE,
                "INTERLACE_RETRY_BACKOFF_SECONDS": "1",
                "INTERLACE_WORKERS": "4",
                "INTERLACE_LOG_LEVEL": "INFO",
            }
        )
        env.update(self.extra_env)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.log_path, "ab") as log:
            log.write(f"----- start #{self.starts + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "interlace_operator"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        wait_for(self.healthy, timeout=60, what="operator /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, like an OOM-killed or evicted pod: no cleanup handlers run."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def logs(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def run_operator(
    operator_kubeconfig: Path, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(namespaces: str | None = None, **env: str) -> OperatorProcess:
        op = OperatorProcess(operator_kubeconfig, namespaces or namespace, tmp_path / "operator.log", env)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()
    rep = getattr(request.node, "rep_call", None)
    if started and (rep is None or rep.failed):
        sys.stderr.write(f"\n----- operator log ({started[0].log_path})\n{started[0].logs(150)}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- PruneJob helpers


# The real KubeRay runs a submitter Job once a Ray cluster is ready; kwok "completes" that Job at once
# and KubeRay then fails the RayJob 30 s later (JobDeploymentStatusTransitionGracePeriodExceeded),
# because no Ray job exists behind the fake pods. Tests that hold a RayJob in a state for longer keep
# its workers unschedulable (no node has this label): KubeRay creates the RayCluster and its head pod
# but never submits, and leaves the statuses the test writes alone.
HELD = {"interlace.dev/node-pool": "held-by-test"}

# A PruneJob on a Ray cluster with an s3:// or hf:// output needs a claim for its work files
# (interlace.schema.spec.shared_work_dir_error: the CRD, the operator and `interlace run` refuse one
# without). Held pods never schedule, so their claim need not exist; a test whose pods must land on
# the fake GPU node creates it bound first (Cluster.work_claim: the scheduler's VolumeBinding plugin
# places no pod whose claim is unbound).
WORK_CLAIM = "interlace-work"


def prunejob(name: str, *, schedulable: bool = False, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "Qwen/Qwen3-VL-4B-Instruct"},
        "pruning": {"ratio": 0.25},
        "output": {"uri": "s3://models/out"},
        "resources": {
            "workers": 1,
            "gpusPerWorker": 2,
            "cpu": "4",
            "memory": "16Gi",
            "headCpu": "1",
            "headMemory": "2Gi",
            "pvcName": WORK_CLAIM,
            "nodeSelector": {"interlace.dev/node-pool": "gpu"} if schedulable else dict(HELD),
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    body.update(spec)
    return {"apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": name}, "spec": body}


class Cluster:
    """Small kubectl conveniences for one namespace."""

    def __init__(self, cp: Any, namespace: str) -> None:
        self.cp = cp
        self.ns = namespace

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, "-n", self.ns, **kw)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-o", "json", "--ignore-not-found", check=True)
        return json.loads(out.stdout) if out.stdout.strip() else None

    def list(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args).stdout)["items"]

    def apply(self, obj: dict[str, Any]) -> None:
        self.cp.apply(obj, namespace=self.ns)

    def work_claim(self, name: str = WORK_CLAIM) -> None:
        """A ReadWriteMany claim bound to a static hostPath PersistentVolume (the controller-manager's
        binder binds them; nothing mounts it: kwok pods run nothing). The volume is owned by the
        namespace, so the garbage collector deletes it with the test's namespace."""
        ns = self.cp.kubectl_json("get", "namespace", self.ns)
        pv = f"{self.ns}-{name}"
        self.cp.apply({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Namespace", "name": self.ns, "uid": ns["metadata"]["uid"]}]},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{pv}"},
                "claimRef": {"namespace": self.ns, "name": name},
            },
        })
        self.apply({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        wait_for(lambda: ((self.get("pvc", name) or {}).get("status") or {}).get("phase") == "Bound",
                 timeout=60, what=f"PersistentVolumeClaim {name} to be Bound")

    def status(self, name: str) -> dict[str, Any]:
        pj = self.get("prunejob", name) or {}
        return pj.get("status") or {}

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == ctype:
                return c
        return {}

    def patch_rayjob_status(self, name: str, **status: Any) -> None:
        """Move a RayJob forward as KubeRay would (nothing runs in kwok pods)."""
        self.kubectl(
            "patch", "rayjob", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
        )

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"PruneJob {name} phase {phase}",
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.list("events")
        return [e for e in items if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "PruneJob"]

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]


@pytest.fixture
def cluster(control_plane: Any, namespace: str, prunejob_crd: str) -> Cluster:
    return Cluster(control_plane, namespace)


def rayjobs_of(cluster: Cluster, pj: str) -> list[str]:
    return sorted(r["metadata"]["name"] for r in cluster.list("rayjobs", f"interlace.dev/prunejob={pj}"))
