"""Operator benchmark on the real test control plane (kube-apiserver, etcd, controller-manager, kwok,
KubeRay): apply -> RayJob-created latency, a burst of PruneJobs, and the operator's memory.

    python bench/operator.py [--samples 40] [--burst 200] [--burst-unsuspended]

* latency: PruneJobs applied one at a time; the time from the create call returning to the RayJob's
  ADDED event on a watch (p50, p99). These jobs are not suspended, so KubeRay builds their Ray
  clusters while the next samples run, as in production.
* burst: N PruneJobs created as fast as 8 client threads can, then the time until every one has its
  RayJob and the operator has recorded it in status (attempts=1). By default the burst jobs are
  created with `suspend: true` (as a Kueue queue would hold them): the operator does all of its work
  (validation, ConfigMap, ServiceAccount, Role, RoleBinding, RayJob, status) but KubeRay builds no
  Ray clusters, so the figure is the operator's, not that of 400 fake pods on a 2-core machine.
  `--burst-unsuspended` measures the other case.
* memory: the operator process's RSS after the burst and its peak (VmHWM), from /proc.

Goals (issue 5): p50 <= 1 s, p99 <= 3 s, burst of 200 <= 60 s, RSS <= 150 MB.
The operator runs as a subprocess (`python -m interlace_operator`), exactly as in the pod.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.testbed import ControlPlane, free_port  # noqa: E402  (stdlib-only module)

GOALS = {"p50": 1.0, "p99": 3.0, "burst": 60.0, "rss_mb": 150.0}


def prunejob(name: str, *, suspend: bool) -> dict[str, Any]:
    return {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "Qwen/Qwen3-VL-4B-Instruct"},
            "pruning": {"ratio": 0.25},
            "output": {"uri": "s3://bench/out"},
            "suspend": suspend,
            "resources": {"workers": 1, "gpusPerWorker": 1, "cpu": "1", "memory": "1Gi",
                          "headCpu": "1", "headMemory": "1Gi"},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class RayJobWatch:
    """Records when each RayJob in a namespace was first seen (ADDED) on a watch."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client, watch

        self.seen: dict[str, float] = {}
        self._cv = threading.Condition()
        self._api = client.CustomObjectsApi(api_client)
        self._watch = watch.Watch()
        self._ns = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                for ev in self._watch.stream(self._api.list_namespaced_custom_object, "ray.io", "v1", self._ns,
                                             "rayjobs", timeout_seconds=300):
                    name = ev["object"]["metadata"]["name"]
                    with self._cv:
                        self.seen.setdefault(name, time.monotonic())
                        self._cv.notify_all()
            except Exception:
                time.sleep(0.2)

    def wait(self, name: str, timeout: float = 60.0) -> float:
        end = time.monotonic() + timeout
        with self._cv:
            while name not in self.seen:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"RayJob {name} not created within {timeout}s")
                self._cv.wait(left)
            return self.seen[name]


def rss(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-unsuspended", action="store_true")
    args = parser.parse_args()

    from kubernetes import client, config

    print("starting the control plane (etcd, kube-apiserver, controllers, kwok, KubeRay) ...", flush=True)
    with ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "manifests/base/crd.yaml"))
        cp.wait_for(lambda: any(c["type"] == "Established" and c["status"] == "True" for c in
                                (cp.kubectl_json("get", "crd", "prunejobs.interlace.dev").get("status") or {})
                                .get("conditions") or []), timeout=60, what="the PruneJob CRD")
        ns = cp.create_namespace(prefix="bench")
        api_client = config.new_client_from_config(config_file=str(cp.admin_kubeconfig))
        api_client.configuration.connection_pool_maxsize = 16
        custom = client.CustomObjectsApi(api_client)
        log = Path(tempfile.mkdtemp(prefix="interlace-bench-")) / "operator.log"
        health = free_port()
        env = dict(os.environ, KUBECONFIG=str(cp.admin_kubeconfig), INTERLACE_WATCH_NAMESPACES=ns,
                   INTERLACE_HEALTH_PORT=str(health), INTERLACE_METRICS_PORT=str(free_port()),
                   INTERLACE_LOG_LEVEL="WARNING")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "interlace_operator"], stdout=fh, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"operator did not start; see {log}") from None
                    time.sleep(0.2)
            idle_rss, _ = rss(proc.pid)
            watch = RayJobWatch(api_client, ns)
            time.sleep(1.0)

            latencies = []
            for i in range(args.samples):
                name = f"lat-{i}"
                t0 = time.monotonic()
                custom.create_namespaced_custom_object("interlace.dev", "v1alpha1", ns, "prunejobs",
                                                       prunejob(name, suspend=False))
                latencies.append(watch.wait(f"{name}-1") - t0)
                time.sleep(0.1)
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(f"apply -> RayJob created over {args.samples} PruneJobs: p50 {p50:.3f} s, p99 {p99:.3f} s, "
                  f"max {max(latencies):.3f} s, mean {statistics.mean(latencies):.3f} s", flush=True)

            names = [f"burst-{i}" for i in range(args.burst)]
            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda n: custom.create_namespaced_custom_object(
                    "interlace.dev", "v1alpha1", ns, "prunejobs", prunejob(n, suspend=not args.burst_unsuspended)),
                    names))
            created = time.monotonic() - t0
            last = max(watch.wait(f"{n}-1", timeout=300) for n in names)
            rayjobs_done = last - t0
            while True:
                items = custom.list_namespaced_custom_object("interlace.dev", "v1alpha1", ns, "prunejobs",
                                                             label_selector="")["items"]
                done = sum(1 for it in items if it["metadata"]["name"].startswith("burst-")
                           and (it.get("status") or {}).get("attempts") == 1)
                if done == len(names):
                    break
                if time.monotonic() - t0 > 600:
                    raise TimeoutError(f"only {done}/{len(names)} burst PruneJobs reconciled")
                time.sleep(0.25)
            burst = time.monotonic() - t0
            rss_mb, peak_mb = rss(proc.pid)
            mode = "unsuspended" if args.burst_unsuspended else "suspended (Kueue-style), operator work only"
            print(f"burst of {args.burst} PruneJobs ({mode}): created in {created:.1f} s, all RayJobs by "
                  f"{rayjobs_done:.1f} s, all statuses recorded by {burst:.1f} s", flush=True)
            print(f"operator RSS: {idle_rss:.0f} MB idle, {rss_mb:.0f} MB after the burst, peak {peak_mb:.0f} MB",
                  flush=True)
            results = {"p50": p50, "p99": p99, "burst": burst, "rss_mb": peak_mb}
            print("\nmetric      measured   goal     ratio(goal/measured)")
            for key, goal in GOALS.items():
                value = results[key]
                print(f"{key:<10} {value:>9.3f}  {goal:>7.1f}  {goal / value if value else float('inf'):>6.2f}x "
                      f"{'OK' if value <= goal else 'MISSED'}")
            return 0 if all(results[k] <= g for k, g in GOALS.items()) else 1
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            print(f"(operator log: {log})")


if __name__ == "__main__":
    sys.exit(main())
