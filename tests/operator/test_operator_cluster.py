"""The operator against the real control plane, with the real KubeRay operator running.

Nothing runs inside kwok pods, so the tests move each RayJob's status forward themselves (a status
patch, exactly what KubeRay would write) and check what the PruneJob, its conditions, printer
columns, events and metrics make of it.
"""

from __future__ import annotations

import json
import time

import pytest

from interlace.runtime.kube import KubeStatusReporter
from interlace.schema.spec import LayerPlan, Results, VariantResult
from interlace.schema.status import Phase, Progress
from tests.operator.conftest import RUNTIME_IMAGE, Cluster, prunejob, rayjobs_of, wait_for

pytestmark = pytest.mark.cluster


def _rayjob(cluster: Cluster, name: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: cluster.get("rayjob", name), timeout=timeout, what=f"RayJob {name}")


def test_apply_to_succeeded(cluster: Cluster, run_operator, control_plane) -> None:
    """apply -> RayJob with the GPU resources -> KubeRay cluster + pods on the fake GPU node -> the
    RayJob moves forward -> phase, conditions, printer columns, events and metrics follow."""
    op = run_operator()
    cluster.work_claim()  # the pods mount it: bound before they can schedule
    cluster.apply(prunejob("life", schedulable=True))
    rj = _rayjob(cluster, "life-1")
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert worker["containers"][0]["image"] == RUNTIME_IMAGE
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert worker["nodeSelector"] == {"interlace.dev/node-pool": "gpu"}
    assert "kueue.x-k8s.io/queue-name" not in rj["metadata"]["labels"]  # queued jobs: test_kueue_cluster.py
    assert not rj["spec"].get("suspend") and "managedBy" not in rj["spec"]
    assert rj["metadata"]["labels"]["interlace.dev/prunejob"] == "life"
    assert rj["spec"]["shutdownAfterJobFinishes"] is True
    assert rj["metadata"]["ownerReferences"][0]["controller"] is True
    for kind, name in [("serviceaccount", "life-job"), ("role", "life-job"),
                       ("rolebinding", "life-job"), ("networkpolicy", "life-ray")]:
        child = cluster.get(kind, name)
        assert child is not None, (kind, name)
        assert child["metadata"]["ownerReferences"][0]["uid"] == cluster.get("prunejob", "life")["metadata"]["uid"]

    # KubeRay builds the Ray cluster: head + GPU worker pods scheduled on the fake GPU node.
    rc_name = wait_for(lambda: (cluster.get("rayjob", "life-1").get("status") or {}).get("rayClusterName"),
                       timeout=60, what="KubeRay to create the RayCluster")
    pods = control_plane.wait_for_pods(cluster.ns, f"ray.io/cluster={rc_name}", count=2, timeout=90)
    gpu_pods = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "worker"]
    assert gpu_pods and all(p["spec"]["nodeName"] for p in gpu_pods)
    node = cluster.cp.kubectl_json("get", "node", gpu_pods[0]["spec"]["nodeName"])
    assert node["metadata"]["labels"]["interlace.dev/node-pool"] == "gpu"
    assert wait_for(lambda: cluster.status("life").get("phase") == "Pending" and cluster.status("life"))

    # The Ray job runs; the job reports its stage; the operator folds it into phase.
    cluster.patch_rayjob_status("life-1", jobDeploymentStatus="Running", jobStatus="RUNNING",
                                startTime="2026-01-01T00:00:00Z")
    wait_for(lambda: cluster.condition("life", "Running").get("status") == "True", what="Running=True")
    assert cluster.condition("life", "Ready")["status"] == "False"  # Ready: finished successfully
    cluster.kubectl("patch", "prunejob", "life", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"stage": "Finetuning", "progress": {"percent": 42.5}}}))
    st = cluster.wait_phase("life", "Finetuning")
    assert st["rayJob"]["jobStatus"] == "RUNNING" and st["rayJob"]["jobDeploymentStatus"] == "Running"

    running_since = cluster.condition("life", "Running")["lastTransitionTime"]
    cluster.patch_rayjob_status("life-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED",
                                endTime="2026-01-01T01:00:00Z")
    cluster.kubectl("patch", "prunejob", "life", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"results": {"relativePerformance": 93.4, "outputUri": "s3://models/out"}}}))
    waited = cluster.kubectl("wait", "--for=condition=Succeeded", "prunejob/life", "--timeout=60s", check=False)
    assert waited.returncode == 0, waited.stderr
    st = cluster.status("life")
    assert st["phase"] == "Succeeded" and st["completionTime"] and st["attempts"] == 1
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["reason"] == "Succeeded" and conds["Failed"]["status"] == "False"
    assert conds["Running"]["status"] == "False" and conds["Running"]["lastTransitionTime"] >= running_since
    # what Flux's default (kstatus) health check reads: Ready=True, nothing Stalled
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "Succeeded"
    assert conds["Stalled"]["status"] == "False"
    assert cluster.kubectl("wait", "--for=condition=Ready", "prunejob/life", "--timeout=5s").returncode == 0
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])

    table = cluster.kubectl("get", "pj", "life").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "MODEL", "RATIO", "PROGRESS", "RETENTION", "SUMMARY", "AGE"]
    assert row.split()[:6] == ["life", "Succeeded", "Qwen/Qwen3-VL-4B-Instruct", "0.25", "42.5", "93.4"], row
    assert row[header.index("SUMMARY"):header.index("AGE")].strip() in ("", "<none>"), row  # not a sweep
    assert "life" in cluster.cp.kubectl("get", "ml", "-n", cluster.ns).stdout  # category

    reasons = wait_for(lambda: (r := cluster.event_reasons("life")) and "Succeeded" in r and r, what="events")
    assert {"RayJobCreated", "JobRunning", "Finetuning", "Succeeded"} <= set(reasons)
    metrics = op.metrics()
    assert f'interlace_prunejobs{{namespace="{cluster.ns}",phase="Succeeded"}} 1.0' in metrics
    assert "interlace_rayjobs_created_total 1.0" in metrics
    from prometheus_client.parser import text_string_to_metric_families

    (info,) = [s for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "interlace_prunejob_info" and s.labels["namespace"] == cluster.ns]
    assert info.value == 1.0 and info.labels == {
        "namespace": cluster.ns, "prunejob": "life", "phase": "Succeeded", "model": "Qwen/Qwen3-VL-4B-Instruct",
        "strategy": "interlace", "dry_run": "false", "queue": "", "rayjob": "life-1"}
    assert rayjobs_of(cluster, "life") == ["life-1"]


def test_status_conflict_fails_and_retries_with_backoff_until_the_limit(cluster: Cluster, run_operator) -> None:
    """jobStatus RUNNING but jobDeploymentStatus Failed -> the attempt failed; its RayJob is deleted and
    the retry makes a new RayJob only once it is gone (never two Ray clusters of one PruneJob); the
    budget ends in Failed without a further RayJob."""
    run_operator()
    cluster.apply(prunejob("flaky", backoffLimit=1))
    _rayjob(cluster, "flaky-1")
    cluster.patch_rayjob_status("flaky-1", jobDeploymentStatus="Failed", jobStatus="RUNNING",
                                reason="AppFailed", message="worker OOM")
    # the foreground deletion of flaky-1 (its RayCluster first) comes before flaky-2
    _rayjob(cluster, "flaky-2", timeout=90)
    assert rayjobs_of(cluster, "flaky") == ["flaky-2"]
    st = cluster.status("flaky")
    assert st["attempts"] == 2
    reasons = cluster.event_reasons("flaky")
    assert "RayJobStatusConflict" in reasons and "AttemptFailed" in reasons and "Retrying" in reasons

    cluster.patch_rayjob_status("flaky-2", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                                message="worker OOM again")
    st = cluster.wait_phase("flaky", "Failed")
    failed = cluster.condition("flaky", "Failed")
    assert failed["status"] == "True" and "gave up after 2 attempts" in failed["message"]
    stalled = cluster.condition("flaky", "Stalled")  # kstatus (Flux) reads it as Failed
    assert stalled["status"] == "True" and stalled["reason"] == failed["reason"]
    assert cluster.condition("flaky", "Ready")["status"] == "False"
    time.sleep(2)  # longer than the backoff: no third attempt may appear
    assert "flaky-3" not in rayjobs_of(cluster, "flaky")
    assert cluster.kubectl("wait", "--for=condition=Failed", "prunejob/flaky", "--timeout=5s").returncode == 0


def test_operator_killed_and_restarted_mid_job(cluster: Cluster, run_operator) -> None:
    """SIGKILL at several points: exactly one RayJob per attempt, the retry budget survives, status converges."""
    op = run_operator()
    cluster.apply(prunejob("crashy", backoffLimit=3))
    _rayjob(cluster, "crashy-1")
    op.kill()

    # While the operator is down the attempt fails; the restarted operator retries exactly once.
    cluster.patch_rayjob_status("crashy-1", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed")
    op.start()
    _rayjob(cluster, "crashy-2", timeout=90)
    op.kill()
    op.start()
    op.kill()
    op.start()
    time.sleep(2)
    assert rayjobs_of(cluster, "crashy") == ["crashy-2"]  # the failed attempt's RayJob was released
    assert wait_for(lambda: cluster.status("crashy").get("attempts") == 2, what="attempts=2")

    # Kill right after a status change, before the operator can have reacted.
    cluster.patch_rayjob_status("crashy-2", jobDeploymentStatus="Running", jobStatus="RUNNING")
    op.kill()
    op.start()
    wait_for(lambda: cluster.condition("crashy", "Running").get("status") == "True", what="Running after restart")
    op.kill()
    cluster.patch_rayjob_status("crashy-2", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    op.start()
    st = cluster.wait_phase("crashy", "Succeeded")
    assert st["attempts"] == 2 and st["rayJob"]["name"] == "crashy-2"
    assert rayjobs_of(cluster, "crashy") == ["crashy-2"]  # the failed attempt's RayJob was released
    assert op.starts == 6
    # no duplicate transition events across restarts
    assert cluster.event_reasons("crashy").count("Succeeded") == 1


def test_delete_leaves_nothing_behind(cluster: Cluster, run_operator) -> None:
    run_operator()
    cluster.apply(prunejob("gone"))
    _rayjob(cluster, "gone-1")
    cluster.kubectl("delete", "prunejob", "gone", "--wait=true", "--timeout=60s")

    def leftovers() -> list[str]:
        left = []
        for kind in ("rayjobs", "roles", "rolebindings", "serviceaccounts", "networkpolicies"):
            left += [f"{kind}/{o['metadata']['name']}" for o in cluster.list(kind, "interlace.dev/prunejob=gone")]
        return left

    wait_for(lambda: not leftovers(), timeout=90, what="garbage collection of the children")
    assert not leftovers()


def test_suspend_and_resume(cluster: Cluster, run_operator) -> None:
    """suspend at creation -> suspended RayJob (no Ray cluster); resume -> KubeRay starts it; suspend again."""
    run_operator()
    cluster.apply(prunejob("sleepy", suspend=True))
    rj = _rayjob(cluster, "sleepy-1")
    assert rj["spec"]["suspend"] is True
    st = cluster.wait_phase("sleepy", "Suspended")
    assert cluster.condition("sleepy", "Suspended")["status"] == "True"
    assert st["startTime"]

    # suspend is the one field that may change after the start
    cluster.kubectl("patch", "prunejob", "sleepy", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: cluster.get("rayjob", "sleepy-1")["spec"].get("suspend") is False, what="RayJob resumed")
    wait_for(lambda: cluster.status("sleepy").get("phase") == "Pending", what="phase Pending after resume")
    assert cluster.condition("sleepy", "Suspended")["status"] == "False"
    wait_for(lambda: (cluster.get("rayjob", "sleepy-1").get("status") or {}).get("rayClusterName"),
             timeout=60, what="KubeRay to create the Ray cluster after resume")

    cluster.kubectl("patch", "prunejob", "sleepy", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    wait_for(lambda: cluster.get("rayjob", "sleepy-1")["spec"].get("suspend") is True, what="RayJob suspended")
    cluster.wait_phase("sleepy", "Suspended")
    reasons = cluster.event_reasons("sleepy")
    assert "Resuming" in reasons and "Suspending" in reasons
    assert rayjobs_of(cluster, "sleepy") == ["sleepy-1"]


def test_active_deadline(cluster: Cluster, run_operator) -> None:
    """spec.activeDeadlineSeconds counts from status.activeSince (when the PruneJob last began to run),
    not from its acceptance: suspended, it has no clock; resumed, the clock starts; past the deadline
    the job fails, no retry, and its RayJob is deleted. The clock is moved back in time instead of
    waiting a minute."""
    run_operator()
    cluster.apply(prunejob("late", activeDeadlineSeconds=60, suspend=True))
    rj = _rayjob(cluster, "late-1")
    assert 1 <= rj["spec"]["activeDeadlineSeconds"] <= 60
    cluster.kubectl("patch", "prunejob", "late", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"startTime": "2020-01-01T00:00:00Z"}}))
    cluster.wait_phase("late", "Suspended")
    assert "activeSince" not in cluster.status("late")  # suspended: no clock, however old the start
    cluster.kubectl("patch", "prunejob", "late", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: cluster.status("late").get("activeSince"), what="status.activeSince set on resume")
    assert cluster.status("late").get("phase") != "Failed"
    cluster.kubectl("patch", "prunejob", "late", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"activeSince": "2020-01-01T00:00:00Z"}}))
    cluster.wait_phase("late", "Failed")
    assert cluster.condition("late", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: cluster.get("rayjob", "late-1") is None, timeout=60, what="overdue RayJob deleted")
    assert rayjobs_of(cluster, "late") == []


def test_reporter_as_the_jobs_service_account(cluster: Cluster, run_operator, control_plane) -> None:
    """The job's own identity may patch its PruneJob's status, and nothing else. Dry run: the job
    stops after the plan; the PruneJob succeeds with the plan in status."""
    from kubernetes.client.exceptions import ApiException

    run_operator()
    cluster.apply(prunejob("own", dryRun=True))
    cluster.apply(prunejob("other"))
    _rayjob(cluster, "own-1")
    _rayjob(cluster, "other-1")
    wait_for(lambda: cluster.get("rolebinding", "own-job"), what="RoleBinding own-job")
    kubeconfig = control_plane.service_account_kubeconfig(cluster.ns, "own-job")

    cluster.patch_rayjob_status("own-1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    reporter = KubeStatusReporter(cluster.ns, "own", kubeconfig=str(kubeconfig), min_interval=1.0, strict=True)
    reporter.stage(Phase.ANALYZING, "computing layer similarity")
    cluster.wait_phase("own", "Analyzing")
    reporter.progress(Progress(percent=10.0, step=1, total_steps=10, loss=2.5))
    reporter.progress(Progress(percent=20.0, step=2, total_steps=10, loss=2.4))  # throttled, sent by the timer
    sent_now = reporter.patches_sent
    wait_for(lambda: cluster.status("own").get("progress", {}).get("step") == 2, timeout=10, what="throttled progress")
    assert reporter.patches_sent == sent_now + 1
    reporter.stage(Phase.PLANNING)
    plan = LayerPlan(num_layers=8, strategy="interlace", ratio=0.25, drop=[2, 5], finetune=[3, 6], anchor=[1, 4],
                     frozen=[0, 7], windows=[[1, 2, 3], [4, 5, 6]], scores_summary={"meanPack3": 0.97})
    reporter.plan(plan)
    st = cluster.wait_phase("own", "Planning")
    assert st["plan"]["drop"] == [2, 5] and st["plan"]["scoresSummary"] == {"meanPack3": 0.97}

    # 403 on another PruneJob's status, and on its own spec.
    with pytest.raises(ApiException) as other:
        KubeStatusReporter(cluster.ns, "other", kubeconfig=str(kubeconfig), strict=True).patch_status({"stage": "Analyzing"})
    assert other.value.status == 403
    from kubernetes import client

    from interlace.runtime.kube import make_api_client
    api = client.CustomObjectsApi(make_api_client(str(kubeconfig)))
    with pytest.raises(ApiException) as spec_patch:
        api.patch_namespaced_custom_object("interlace.dev", "v1alpha1", cluster.ns, "prunejobs", "own",
                                           {"spec": {"backoffLimit": 5}}, _content_type="application/merge-patch+json")
    assert spec_patch.value.status == 403
    # ... and the operator's fields are untouched by the reporter's patches
    assert cluster.status("own")["attempts"] == 1

    cluster.patch_rayjob_status("own-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    st = cluster.wait_phase("own", "Succeeded")
    assert cluster.condition("own", "Succeeded")["reason"] == "DryRunCompleted"
    assert st["plan"]["finetune"] == [3, 6]
    reporter.results(Results(output_uri="s3://models/out", layers_before=8, layers_after=6))
    reporter.close()
    assert cluster.status("own")["results"]["layersAfter"] == 6


def test_a_sweep_reports_its_table_of_variants(cluster: Cluster, run_operator, control_plane) -> None:
    """spec.pruning.ratios is admitted; the job's own identity writes the variants table as it moves
    (the reporter interlace.pipeline.sweep drives); kubectl shows the one-line summary; the Succeeded
    condition's message carries it."""
    run_operator()
    job = prunejob("sweep")
    job["spec"]["pruning"] = {"ratios": [0.1, 0.2]}
    cluster.apply(job)
    rj = _rayjob(cluster, "sweep-1")
    env = {e["name"]: e.get("value") for e in rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0].get("env", [])}
    import yaml

    assert yaml.safe_load(env["INTERLACE_PRUNEJOB_SPEC"])["spec"]["pruning"]["ratios"] == [0.1, 0.2]
    wait_for(lambda: cluster.get("rolebinding", "sweep-job"), what="RoleBinding sweep-job")
    kubeconfig = control_plane.service_account_kubeconfig(cluster.ns, "sweep-job")
    cluster.patch_rayjob_status("sweep-1", jobDeploymentStatus="Running", jobStatus="RUNNING")

    from interlace.pipeline.sweep import summary

    reporter = KubeStatusReporter(cluster.ns, "sweep", kubeconfig=str(kubeconfig), min_interval=1.0, strict=True)
    rows = [VariantResult(ratio=0.1, state="Running"), VariantResult(ratio=0.2)]
    reporter.results(Results(layers_before=30, variants=rows, summary=summary(rows)))
    st = wait_for(lambda: (s := cluster.status("sweep")).get("results", {}).get("variants") and s, what="variants")
    assert [(v["ratio"], v["state"]) for v in st["results"]["variants"]] == [(0.1, "Running"), (0.2, "Pending")]
    rows = [
        VariantResult(ratio=0.1, state="Succeeded", layers_dropped=3, relative_performance=97.25,
                      output_uri="s3://models/out/ratio-0.1"),
        VariantResult(ratio=0.2, state="Succeeded", layers_dropped=6, relative_performance=93.5,
                      output_uri="s3://models/out/ratio-0.2"),
    ]
    reporter.results(Results(layers_before=30, variants=rows, summary=summary(rows)))
    reporter.close()
    cluster.patch_rayjob_status("sweep-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    st = cluster.wait_phase("sweep", "Succeeded")
    assert [v["outputUri"] for v in st["results"]["variants"]] == ["s3://models/out/ratio-0.1", "s3://models/out/ratio-0.2"]
    assert "0.1: 97.2%, 0.2: 93.5%" in cluster.condition("sweep", "Succeeded")["message"]
    header, row = cluster.kubectl("get", "pj", "sweep").stdout.splitlines()[:2]
    starts = [header.index(name) for name in header.split()]
    cols = {name: row[a:b].strip() for name, a, b in zip(header.split(), starts, [*starts[1:], None], strict=True)}
    assert cols["RATIO"] in ("", "<none>") and cols["SUMMARY"] == "0.1: 97.2%, 0.2: 93.5%", row
    wide = cluster.kubectl("get", "pj", "sweep", "-o", "wide").stdout
    assert "[0.1,0.2]" in wide.replace(" ", "")
