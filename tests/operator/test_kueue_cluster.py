"""The operator with a real Kueue (tests/cluster/testbed.py `Kueue`, the `kueue` fixture: one Kueue
controller for this module, its webhooks on 127.0.0.1) and the real KubeRay on the real control plane.

Each test gets its own ClusterQueue (2 nvidia.com/gpu) and LocalQueue `gpu`; a PruneJob with 1 worker x
2 GPUs fills it. The Ray pods never schedule (conftest HELD): Kueue's admission is about quota, and the
RayJobs stay where the test puts them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.testbed import ControlPlane, Kueue
from tests.operator.conftest import Cluster, OperatorProcess, prunejob, rayjobs_of, wait_for

pytestmark = pytest.mark.cluster

QUEUE = "gpu"


def queued_prunejob(name: str, resources: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = prunejob(name, **spec)
    body["spec"]["resources"] = {**body["spec"]["resources"], "queueName": QUEUE, **(resources or {})}
    return body


def rayjob(cluster: Cluster, name: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(lambda: cluster.get("rayjob", name), timeout=timeout, what=f"RayJob {name}")


def workload(cluster: Cluster, rj_name: str, timeout: float = 30.0) -> dict[str, Any]:
    """The Kueue Workload of a RayJob (Kueue names it rayjob-<name>-<hash>)."""
    uid = rayjob(cluster, rj_name)["metadata"]["uid"]
    return wait_for(
        lambda: next(iter(cluster.list("workloads.kueue.x-k8s.io", f"kueue.x-k8s.io/job-uid={uid}")), None),
        timeout=timeout, what=f"the Workload of RayJob {rj_name}",
    )


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def suspended(cluster: Cluster, rj_name: str) -> bool:
    return bool((cluster.get("rayjob", rj_name) or {}).get("spec", {}).get("suspend"))


def reconciles(op: OperatorProcess) -> float:
    for fam in text_string_to_metric_families(op.metrics()):
        for s in fam.samples:
            if s.name == "interlace_reconcile_duration_seconds_count":
                return s.value
    return 0.0


@pytest.fixture
def queue(kueue: Kueue, namespace: str) -> str:
    return kueue.queue(namespace, QUEUE)


def test_full_queue_stays_queued_then_admitted_when_quota_frees(
    cluster: Cluster, queue: str, run_operator, control_plane: ControlPlane
) -> None:
    op = run_operator()
    cluster.apply(queued_prunejob("first"))
    rj = rayjob(cluster, "first-1")
    assert rj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    # Kueue admits the first (2 of 2 GPUs) by un-suspending its RayJob; KubeRay then builds the cluster.
    wait_for(lambda: not suspended(cluster, "first-1"), what="Kueue to admit first-1")
    assert condition(workload(cluster, "first-1"), "Admitted").get("status") == "True"
    wait_for(lambda: (cluster.get("rayjob", "first-1").get("status") or {}).get("rayClusterName"),
             what="KubeRay to create the Ray cluster of first-1")
    wait_for(lambda: cluster.condition("first", "Ready").get("reason") not in (None, "Queued", "Admitted", "Accepted"),
             what="first to leave Queued")

    # The second does not fit: its RayJob stays suspended and its status says why (the Workload's message).
    cluster.apply(queued_prunejob("second"))
    rayjob(cluster, "second-1")
    wl = workload(cluster, "second-1")
    wait_for(lambda: condition(cluster.get("workload", wl["metadata"]["name"]), "QuotaReserved").get("message"),
             what="Kueue to say why second-1 waits")

    def queued_status() -> dict[str, Any] | None:
        """Pending, Ready reason Queued, the message quoting the Workload's QuotaReserved=False message."""
        st = cluster.status("second")
        ready = cluster.condition("second", "Ready")
        reserved = condition(cluster.get("workload", wl["metadata"]["name"]), "QuotaReserved")
        ok = (st.get("phase") == "Pending" and ready.get("reason") == "Queued" and reserved.get("status") == "False"
              and "quota" in reserved.get("message", "") and reserved["message"] in ready.get("message", ""))
        return st if ok else None

    st = wait_for(queued_status, timeout=40, what="second's status to say it is queued for quota")
    message = cluster.condition("second", "Ready")["message"]
    assert f"LocalQueue {QUEUE}" in message and wl["metadata"]["name"] in message
    assert st["attempts"] == 1 and cluster.condition("second", "Suspended")["status"] == "False"
    assert "Queued" in wait_for(lambda: cluster.event_reasons("second"), what="events of second")

    # Across several reconcile passes (the operator looks again every 10 s while queued) nobody
    # writes the RayJob's spec: no un-suspend by the operator, no re-suspend by Kueue.
    generation = cluster.get("rayjob", "second-1")["metadata"]["generation"]
    passes = reconciles(op)
    end = time.monotonic() + 25
    while time.monotonic() < end:
        rj = cluster.get("rayjob", "second-1")
        assert rj["spec"]["suspend"] is True and rj["metadata"]["generation"] == generation
        time.sleep(0.5)
    assert reconciles(op) >= passes + 2, "the operator did not reconcile while the job was queued"
    assert cluster.status("second")["phase"] == "Pending"

    # The first finishes: Kueue frees its quota and admits the second, whose status follows.
    cluster.patch_rayjob_status("first-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED",
                                endTime="2026-01-01T01:00:00Z")
    cluster.wait_phase("first", "Succeeded")
    wait_for(lambda: not suspended(cluster, "second-1"), timeout=60, what="Kueue to admit second-1")
    wait_for(lambda: cluster.condition("second", "Ready").get("reason") not in ("Queued", "Admitted"),
             timeout=30, what="second's status to leave Queued")
    assert cluster.status("second")["phase"] == "Pending"
    assert rayjobs_of(cluster, "second") == ["second-1"]


def test_deleting_the_admitted_job_frees_the_quota(cluster: Cluster, queue: str, run_operator) -> None:
    run_operator()
    cluster.apply(queued_prunejob("one"))
    wait_for(lambda: rayjobs_of(cluster, "one") and not suspended(cluster, "one-1"), what="one admitted")
    cluster.apply(queued_prunejob("two"))
    wait_for(lambda: cluster.condition("two", "Ready").get("reason") == "Queued", what="two queued")
    cluster.kubectl("delete", "prunejob", "one", "--wait=false")
    wait_for(lambda: not suspended(cluster, "two-1"), timeout=90, what="Kueue to admit two-1 after one is deleted")
    wait_for(lambda: cluster.condition("two", "Ready").get("reason") not in ("Queued", "Admitted"),
             what="two's status to leave Queued")


def test_user_suspend_and_resume_with_kueue(cluster: Cluster, queue: str, run_operator, kueue: Kueue) -> None:
    """spec.suspend of a Kueue-managed PruneJob deactivates its Workload: Kueue evicts and suspends the
    RayJob and releases the quota (a suspend written on the RayJob would be undone by Kueue);
    suspend: false reactivates it and Kueue admits it again."""
    run_operator()
    cluster.apply(queued_prunejob("pausy"))
    wait_for(lambda: rayjobs_of(cluster, "pausy") and not suspended(cluster, "pausy-1"), what="pausy admitted")
    wl_name = workload(cluster, "pausy-1")["metadata"]["name"]
    cq = f"{cluster.ns}-{QUEUE}"

    cluster.kubectl("patch", "prunejob", "pausy", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    wait_for(lambda: suspended(cluster, "pausy-1"), what="Kueue to suspend pausy-1")
    cluster.wait_phase("pausy", "Suspended")
    wl = cluster.get("workload", wl_name)
    assert wl["spec"]["active"] is False and wl["metadata"]["annotations"]["interlace.dev/suspended"] == "true"
    assert condition(wl, "Evicted").get("reason") == "Deactivated"
    wait_for(lambda: (cluster.cp.kubectl_json("get", "clusterqueue", cq).get("status") or {})
             .get("admittedWorkloads") == 0, what="the quota to be released")
    # it stays suspended: Kueue does not undo it, the operator does not either
    time.sleep(5)
    assert suspended(cluster, "pausy-1") and cluster.status("pausy")["phase"] == "Suspended"

    cluster.kubectl("patch", "prunejob", "pausy", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: not suspended(cluster, "pausy-1"), timeout=60, what="Kueue to admit pausy-1 again")
    wl = cluster.get("workload", wl_name)
    assert wl["spec"]["active"] is True and "interlace.dev/suspended" not in (wl["metadata"].get("annotations") or {})
    wait_for(lambda: cluster.status("pausy").get("phase") == "Pending", what="pausy Pending after resume")
    assert cluster.condition("pausy", "Suspended")["status"] == "False"
    reasons = cluster.event_reasons("pausy")
    assert "Suspending" in reasons and "Resuming" in reasons
    assert rayjobs_of(cluster, "pausy") == ["pausy-1"]


def test_a_workload_deactivated_by_someone_else_stays_deactivated(cluster: Cluster, queue: str, run_operator) -> None:
    """Kueue itself deactivates Workloads (requeuing limit, maximum execution time), and so may an
    admin: the operator does not reactivate a Workload it did not deactivate; the status says why."""
    run_operator()
    cluster.apply(queued_prunejob("stopped"))
    wait_for(lambda: rayjobs_of(cluster, "stopped") and not suspended(cluster, "stopped-1"), what="admitted")
    wl_name = workload(cluster, "stopped-1")["metadata"]["name"]
    cluster.kubectl("patch", "workload", wl_name, "--type=merge", "-p", '{"spec": {"active": false}}')
    wait_for(lambda: suspended(cluster, "stopped-1"), what="Kueue to evict stopped-1")
    ready = wait_for(lambda: (c := cluster.condition("stopped", "Ready")).get("reason") == "Deactivated" and c,
                     what="status reason Deactivated")
    assert wl_name in ready["message"] and cluster.status("stopped")["phase"] == "Pending"
    time.sleep(5)  # (the pass that wrote Deactivated already saw active: false and left it)
    assert cluster.get("workload", wl_name)["spec"]["active"] is False and suspended(cluster, "stopped-1")


def test_suspended_at_creation_with_kueue_waits_without_a_rayjob(cluster: Cluster, queue: str, run_operator) -> None:
    """Created suspended: no RayJob (so no Workload Kueue could admit before the operator deactivates
    it); resumed: the RayJob is created suspended and Kueue admits it."""
    run_operator()
    cluster.apply(queued_prunejob("later", suspend=True))
    st = cluster.wait_phase("later", "Suspended")
    assert f"LocalQueue {QUEUE}" in cluster.condition("later", "Suspended")["message"]
    time.sleep(3)
    assert rayjobs_of(cluster, "later") == [] and not st.get("attempts")
    cluster.kubectl("patch", "prunejob", "later", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    rayjob(cluster, "later-1")
    wait_for(lambda: not suspended(cluster, "later-1"), timeout=60, what="Kueue to admit later-1")
    wait_for(lambda: cluster.status("later").get("phase") == "Pending", what="later Pending")
    assert workload(cluster, "later-1")["spec"].get("active", True) is True


def test_missing_local_queue_says_so(cluster: Cluster, queue: str, run_operator) -> None:
    run_operator()
    cluster.apply(queued_prunejob("lost", resources={"queueName": "nope"}))
    wait_for(lambda: cluster.condition("lost", "Ready").get("reason") == "Queued"
             and "nope" in cluster.condition("lost", "Ready").get("message", "")
             and "Workload" in cluster.condition("lost", "Ready")["message"], what="lost queued on a missing queue")
    assert suspended(cluster, "lost-1")


def test_managed_by_reaches_the_rayjob(cluster: Cluster, queue: str, run_operator) -> None:
    run_operator()
    cluster.apply(queued_prunejob("multi", resources={"managedBy": "ray.io/kuberay-operator"}))
    rj = rayjob(cluster, "multi-1")
    assert rj["spec"]["managedBy"] == "ray.io/kuberay-operator"
    workload(cluster, "multi-1")  # Kueue (its webhooks included) took it
    # the API server (KubeRay's CRD) keeps the field immutable: it is only ever set at creation
    out = cluster.kubectl("patch", "rayjob", "multi-1", "--type=merge",
                          "-p", json.dumps({"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}}), check=False)
    assert out.returncode != 0
    # MultiKueue is refused before anything exists (its worker clusters have neither the job's
    # ServiceAccount nor the PruneJob its status goes to)
    out = cluster.kubectl("apply", "-f", "-", input=json.dumps(
        queued_prunejob("multi2", resources={"managedBy": "kueue.x-k8s.io/multikueue"})), check=False)
    assert out.returncode != 0 and "spec.resources.managedBy" in out.stderr, out.stderr
