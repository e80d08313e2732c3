"""The operator's hardening against the real API server: allow-lists (no escalation through the
operator), server-side dry run before the spec is frozen, adoption only by owner UID, the status
writer policy (the job's token cannot forge operator-owned status), and, on a dedicated control plane
with OwnerReferencesPermissionEnforcement and without KubeRay, the KubeRayMissing condition and
child creation under that admission plugin."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from interlace_operator.rbac import RULES, cluster_role, status_policy

from tests.operator.conftest import CRD_FILE, Cluster, OperatorProcess, prunejob, rayjobs_of, wait_for

pytestmark = pytest.mark.cluster


def _failed(cluster: Cluster, name: str, reason: str) -> dict[str, Any]:
    return wait_for(
        lambda: (c := cluster.condition(name, "Failed")).get("status") == "True" and c.get("reason") == reason and c,
        timeout=30, what=f"{name} Failed/{reason}",
    )


def test_a_prunejob_cannot_pick_an_identity_priority_or_tolerations_beyond_the_allow_list(
    cluster: Cluster, run_operator
) -> None:
    run_operator()
    res = prunejob("x")["spec"]["resources"]
    cluster.apply(prunejob("escalate", resources={
        **res,
        "serviceAccountName": "default",
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"operator": "Exists"}],
    }))
    cond = _failed(cluster, "escalate", "NotAllowed")
    for field in ("spec.resources.serviceAccountName", "spec.resources.priorityClassName",
                  "spec.resources.tolerations[0].key"):
        assert field in cond["message"], cond["message"]
    status = cluster.status("escalate")
    assert "startTime" not in status  # nothing frozen, nothing created
    assert rayjobs_of(cluster, "escalate") == []
    assert cluster.get("rolebinding", "escalate-job") is None
    assert "NotAllowed" in wait_for(lambda: cluster.event_reasons("escalate"), what="the NotAllowed event")

    # What the operator's configuration allows goes through:
    # test_pods_of_a_shared_service_account_write_status_as_their_own_job_only.


def test_pods_of_a_shared_service_account_write_status_as_their_own_job_only(
    cluster: Cluster, run_operator, control_plane, operator_kubeconfig: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two PruneJobs run as one allow-listed ServiceAccount. The Role of each stays bound to its own
    per-job account, whose token the operator hands the pods as a Secret; the library's status writer
    (KubeStatusReporter, in-cluster, with INTERLACE_STATUS_TOKEN_DIR) reaches its own PruneJob and is
    refused on the other, and the shared account itself may write neither. The operator's test account
    holds exactly RULES first: the token Secret is then refused in the pre-flight, before anything."""
    from interlace_operator.rbac import SHARED_ACCOUNT_RULES
    from kubernetes.client.exceptions import ApiException

    from interlace.runtime.kube import KubeStatusReporter

    cluster.kubectl("create", "serviceaccount", "shared-sa")
    run_operator(INTERLACE_ALLOWED_SERVICE_ACCOUNTS="shared-sa")
    res = {**prunejob("x")["spec"]["resources"], "serviceAccountName": "shared-sa"}
    cluster.apply(prunejob("team-a", resources=res))
    cond = _failed(cluster, "team-a", "ChildRejected")
    assert "Secret" in cond["message"] and "forbidden" in cond["message"].lower(), cond["message"]
    assert rayjobs_of(cluster, "team-a") == [] and "startTime" not in cluster.status("team-a")

    _, sa_ns, sa_name = _username(control_plane, operator_kubeconfig).rsplit(":", 2)
    grant = f"shared-{cluster.ns}"
    role = cluster_role(grant)
    role["rules"] = SHARED_ACCOUNT_RULES
    control_plane.apply([role, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": grant},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}],
    }])
    try:
        cluster.kubectl("patch", "prunejob", "team-a", "--type=merge", "-p", '{"spec": {"pruning": {"ratio": 0.3}}}')
        cluster.apply(prunejob("team-b", resources=res))
        for name in ("team-a", "team-b"):
            rj = wait_for(lambda n=name: cluster.get("rayjob", f"{n}-1"), timeout=30, what=f"RayJob {name}-1")
            assert rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "shared-sa"
            binding = cluster.get("rolebinding", f"{name}-job")
            assert binding is not None
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{name}-job", "namespace": cluster.ns}]

        secret = wait_for(lambda: ((cluster.get("secret", "team-a-job-token") or {}).get("data") or {}).get("token")
                          and cluster.get("secret", "team-a-job-token"), timeout=30,
                          what="the token controller to fill team-a-job-token")
        assert secret["metadata"]["ownerReferences"][0]["name"] == "team-a"
        token_dir = tmp_path / "status-token"
        token_dir.mkdir()
        for key in ("token", "ca.crt"):
            (token_dir / key).write_bytes(base64.b64decode(secret["data"][key]))
        host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        monkeypatch.setenv("INTERLACE_STATUS_TOKEN_DIR", str(token_dir))
        KubeStatusReporter(cluster.ns, "team-a", strict=True).patch_status({"stage": "Analyzing"})
        assert cluster.status("team-a")["stage"] == "Analyzing"
        with pytest.raises(ApiException) as other:
            KubeStatusReporter(cluster.ns, "team-b", strict=True).patch_status({"stage": "Analyzing"})
        assert other.value.status == 403
        assert cluster.status("team-b").get("stage") != "Analyzing"

        shared = control_plane.service_account_kubeconfig(cluster.ns, "shared-sa")
        for name in ("team-a", "team-b"):
            out = control_plane.kubectl("-n", cluster.ns, "patch", "prunejob", name, "--subresource=status",
                                        "--type=merge", "-p", '{"status": {"stage": "Publishing"}}',
                                        kubeconfig=shared, check=False)
            assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr
    finally:
        control_plane.kubectl("delete", "clusterrolebinding,clusterrole", grant, "--ignore-not-found", check=False)


def test_what_the_api_server_refuses_fails_before_the_spec_is_frozen(cluster: Cluster, run_operator) -> None:
    """A child the API server refuses (here: a quota of zero RayJobs) is a Failed condition with the
    API's message and an event, with no startTime; fixing the cause and editing the spec retries."""
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-rayjobs"},
                   "spec": {"hard": {"count/rayjobs.ray.io": "0"}}})
    wait_for(lambda: ((cluster.get("resourcequota", "no-rayjobs") or {}).get("status") or {}).get("hard"),
             what="the quota controller to count")
    run_operator()
    cluster.apply(prunejob("quota"))
    cond = _failed(cluster, "quota", "ChildRejected")
    assert "RayJob" in cond["message"] and "exceeded quota" in cond["message"], cond["message"]
    assert "startTime" not in cluster.status("quota")
    assert rayjobs_of(cluster, "quota") == []
    assert "ChildRejected" in wait_for(lambda: cluster.event_reasons("quota"), what="the ChildRejected event")

    cluster.kubectl("delete", "resourcequota", "no-rayjobs")
    wait_for(lambda: cluster.get("resourcequota", "no-rayjobs") is None, what="quota gone")
    cluster.kubectl("patch", "prunejob", "quota", "--type=merge", "-p", '{"spec": {"pruning": {"ratio": 0.3}}}')
    wait_for(lambda: cluster.get("rayjob", "quota-1"), timeout=30, what="RayJob quota-1 after the fix")
    assert cluster.status("quota").get("startTime")


def test_orphaned_children_of_an_earlier_prunejob_are_a_conflict_not_a_result(
    cluster: Cluster, run_operator
) -> None:
    run_operator()
    cluster.apply(prunejob("orphan", output={"uri": "s3://models/old"}))
    wait_for(lambda: cluster.get("rayjob", "orphan-1"), timeout=30, what="RayJob orphan-1")
    wait_for(lambda: cluster.get("rolebinding", "orphan-job"), what="RoleBinding orphan-job")
    old_uid = cluster.get("prunejob", "orphan")["metadata"]["uid"]
    cluster.kubectl("delete", "prunejob", "orphan", "--cascade=orphan", "--wait=true", "--timeout=60s")
    wait_for(lambda: not (cluster.get("rayjob", "orphan-1") or {}).get("metadata", {}).get("ownerReferences"),
             timeout=60, what="the garbage collector to orphan RayJob orphan-1")
    # the old run finishes, as KubeRay would report it
    cluster.patch_rayjob_status("orphan-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED",
                                endTime="2026-01-01T01:00:00Z")

    cluster.apply(prunejob("orphan", output={"uri": "s3://models/new"}))
    assert cluster.get("prunejob", "orphan")["metadata"]["uid"] != old_uid
    cond = wait_for(lambda: (c := cluster.condition("orphan", "Ready")).get("reason") == "ChildConflict" and c,
                    timeout=30, what="ChildConflict")
    assert "not controlled by this PruneJob" in cond["message"]
    assert "ChildConflict" in wait_for(lambda: cluster.event_reasons("orphan"), what="the ChildConflict event")
    time.sleep(3)
    status = cluster.status("orphan")
    assert status["phase"] == "Pending" and "results" not in status
    assert (status.get("rayJob") or {}).get("name") != "orphan-1" or not status["rayJob"].get("endTime")
    assert not (cluster.get("rayjob", "orphan-1")["metadata"].get("ownerReferences"))  # never adopted


def _username(cp: Any, kubeconfig: Path) -> str:
    who = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    return who["status"]["userInfo"]["username"]


def test_the_jobs_token_cannot_forge_operator_owned_status(
    cluster: Cluster, run_operator, control_plane, operator_kubeconfig: Path
) -> None:
    """The shipped ValidatingAdmissionPolicy (bound to this test's namespace only): the job's
    ServiceAccount may write stage/progress/plan/results of its own PruneJob, nothing else."""
    policy, binding = status_policy(
        operator_user=_username(control_plane, operator_kubeconfig),
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": cluster.ns}},
    )
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = f"status-{cluster.ns}"
    control_plane.apply([policy, binding])
    try:
        run_operator()
        cluster.apply(prunejob("probe"))
        cluster.apply(prunejob("forge"))
        wait_for(lambda: cluster.get("rayjob", "forge-1"), timeout=30, what="RayJob forge-1")
        wait_for(lambda: cluster.get("rolebinding", "forge-job"), what="RoleBinding forge-job")
        wait_for(lambda: cluster.status("probe").get("attempts") == 1, what="probe attempt 1")

        def enforced() -> bool:  # the policy is live once the admin's own forgery is refused
            out = cluster.kubectl("patch", "prunejob", "probe", "--subresource=status", "--type=merge",
                                  "-p", '{"status": {"attempts": 7}}', check=False)
            return out.returncode != 0 and "written by the interlace operator only" in out.stderr

        wait_for(enforced, timeout=30, what="the ValidatingAdmissionPolicy to be enforced")
        job = control_plane.service_account_kubeconfig(cluster.ns, "forge-job")

        def as_job(name: str, status: dict[str, Any]) -> Any:
            return control_plane.kubectl("-n", cluster.ns, "patch", "prunejob", name, "--subresource=status",
                                         "--type=merge", "-p", json.dumps({"status": status}),
                                         kubeconfig=job, check=False)

        for forged in ({"phase": "Succeeded"}, {"attempts": 0}, {"startTime": "2099-01-01T00:00:00Z"},
                       {"conditions": []}, {"completionTime": "2026-01-01T00:00:00Z"}):
            out = as_job("forge", forged)
            assert out.returncode != 0, forged
            assert "written by the interlace operator only" in out.stderr, out.stderr
        out = as_job("probe", {"stage": "Finetuning"})  # another PruneJob: RBAC says no
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr
        out = as_job("forge", {"stage": "Finetuning", "progress": {"percent": 10.0}})
        assert out.returncode == 0, out.stderr
        st = cluster.status("forge")
        assert st["phase"] != "Succeeded" and st["attempts"] == 1 and st["stage"] == "Finetuning"
        # the operator still writes its fields
        cluster.patch_rayjob_status("forge-1", jobDeploymentStatus="Running", jobStatus="RUNNING")
        cluster.wait_phase("forge", "Finetuning")
    finally:
        control_plane.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                              f"status-{cluster.ns}", "--ignore-not-found", check=False)


# ------------------------------------------------- a control plane of its own: no KubeRay, OwnerReferences


@pytest.fixture(scope="module")
def strict_plane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.cluster.testbed import ControlPlane

    cp = ControlPlane(
        kwok=False, kuberay=False,
        extra_args={"kube-apiserver": ["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]},
    )
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


def _established(cp: Any, crd: str) -> bool:
    conds = (cp.kubectl_json("get", "crd", crd).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


def _operator_account(cp: Any, ns: str, name: str, rules: list[dict[str, Any]]) -> Path:
    role = cluster_role(name)
    role["rules"] = rules
    cp.apply(role)
    cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    })
    return cp.service_account_kubeconfig(ns, name, create=True)


def test_without_kuberay_a_condition_says_to_install_it_and_children_pass_owner_reference_enforcement(
    strict_plane: Any, tmp_path: Path
) -> None:
    cp = strict_plane
    cp.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    wait_for(lambda: _established(cp, "prunejobs.interlace.dev"), timeout=60, what="the PruneJob CRD")
    system = cp.create_namespace(prefix="interlace-system")
    ns = cp.create_namespace(prefix="jobs")
    cluster = Cluster(cp, ns)

    # The plugin is on: without prunejobs/finalizers, setting blockOwnerDeletion is refused.
    cluster.apply(prunejob("owner"))
    owner_uid = cluster.get("prunejob", "owner")["metadata"]["uid"]
    lacking = _operator_account(cp, system, "no-finalizers", [r for r in RULES if "prunejobs/finalizers" not in r["resources"]])
    child = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "child", "ownerReferences": [{
        "apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "name": "owner", "uid": owner_uid,
        "controller": True, "blockOwnerDeletion": True}]}}
    out = cp.kubectl("-n", ns, "create", "-f", "-", input=json.dumps(child), kubeconfig=lacking, check=False)
    assert out.returncode != 0 and "blockOwnerDeletion" in out.stderr, out.stderr

    kubeconfig = _operator_account(cp, system, "interlace-operator", RULES)
    op = OperatorProcess(kubeconfig, ns, tmp_path / "operator.log", {"INTERLACE_KUBERAY_RETRY_SECONDS": "2"}).start()
    try:
        cluster.apply(prunejob("waiting"))
        cond = wait_for(lambda: (c := cluster.condition("waiting", "Ready")).get("reason") == "KubeRayMissing" and c,
                        timeout=30, what="KubeRayMissing")
        assert "install the KubeRay operator" in cond["message"]
        assert cluster.status("waiting")["phase"] == "Pending"
        time.sleep(6)  # a few retries
        assert cluster.event_reasons("waiting").count("KubeRayMissing") == 1
        assert "Traceback" not in op.log_path.read_text()

        crds = sorted(cp.binaries.kuberay_crd_dir.glob("*rayjobs*.yaml"))
        assert crds, cp.binaries.kuberay_crd_dir
        cp.kubectl("apply", "--server-side", "-f", str(crds[0]))
        wait_for(lambda: _established(cp, "rayjobs.ray.io"), timeout=60, what="the RayJob CRD")
        # created under OwnerReferencesPermissionEnforcement, with blockOwnerDeletion owner references
        rj = wait_for(lambda: cluster.get("rayjob", "waiting-1"), timeout=60, what="RayJob waiting-1")
        assert rj["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
        for kind in ("serviceaccount", "role", "rolebinding"):
            assert cluster.get(kind, "waiting-job") is not None, kind
    finally:
        op.stop()


def test_restart_storm_loses_and_duplicates_no_event(cluster: Cluster, run_operator) -> None:
    """The operator is SIGKILLed 10 times while a burst of PruneJobs is created, and 3 more times while
    their RayJobs start running: every PruneJob ends with exactly one RayJobCreated and one JobRunning
    Event (deterministic event names, posted after the state is recorded, replayed on restart)."""
    import random

    rng = random.Random(12)
    n = 20
    op = run_operator()
    cluster.cp.apply([{**prunejob(f"storm-{i}"), "metadata": {"name": f"storm-{i}", "namespace": cluster.ns}}
                      for i in range(n)])
    for _ in range(10):
        time.sleep(rng.uniform(0.1, 0.8))
        op.kill()
        op.start()

    def started() -> bool:
        return all(cluster.status(f"storm-{i}").get("attempts") == 1 for i in range(n))

    wait_for(started, timeout=120, what="every PruneJob to record attempt 1")
    for i in range(n):
        assert rayjobs_of(cluster, f"storm-{i}") == [f"storm-{i}-1"]

    for i in range(n):
        cluster.patch_rayjob_status(f"storm-{i}-1", jobDeploymentStatus="Running", jobStatus="RUNNING")
        if i in (3, 9, 15):
            op.kill()
            op.start()
    wait_for(lambda: all(cluster.condition(f"storm-{i}", "Ready").get("reason") == "JobRunning" for i in range(n)),
             timeout=120, what="every PruneJob Ready/JobRunning")
    time.sleep(3)  # events are posted asynchronously

    events = cluster.list("events")
    problems = []
    for i in range(n):
        mine = [e for e in events if e["involvedObject"].get("name") == f"storm-{i}"
                and e["involvedObject"].get("kind") == "PruneJob"]
        reasons = sorted(e["reason"] for e in mine)
        if reasons.count("RayJobCreated") != 1 or reasons.count("JobRunning") != 1:
            problems.append(f"storm-{i}: {reasons}")
        if any(e.get("count", 1) != 1 for e in mine) or len(reasons) != len(set(reasons)):
            problems.append(f"storm-{i} duplicates: {reasons}")
    assert op.starts == 14
    assert problems == [], "\n".join(problems)
