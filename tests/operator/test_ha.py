"""Two operator replicas with leader election on the real control plane: one reconciles, the other
waits; SIGKILL of the leader in the middle of a burst hands over to the standby, which finishes every
PruneJob without a second RayJob for any attempt; the restarted replica comes back as a standby."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from interlace_operator.leader import LEASE_RULES

from tests.operator.conftest import Cluster, OperatorProcess, prunejob, rayjobs_of, wait_for

pytestmark = pytest.mark.cluster

LEASE = "interlace-operator"
TIMING = {"INTERLACE_LEASE_DURATION_SECONDS": "4", "INTERLACE_LEASE_RENEW_DEADLINE_SECONDS": "3",
          "INTERLACE_LEASE_RETRY_PERIOD_SECONDS": "0.5"}


def grant_leases(cp: Any, namespace: str, kubeconfig: Path) -> None:
    """The chart's leader-election Role (leader.LEASE_RULES) for the operator's ServiceAccount."""
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["name"]  # system:serviceaccount:NS:NAME
    _, _, sa_ns, sa = user.split(":")
    cp.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
              "metadata": {"name": "leader-election", "namespace": namespace}, "rules": LEASE_RULES})
    cp.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
              "metadata": {"name": "leader-election", "namespace": namespace},
              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
              "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]})


def lease_holder(cluster: Cluster) -> str:
    lease = cluster.get("lease", LEASE) or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def leader_metric(op: OperatorProcess) -> float:
    m = re.search(r"^interlace_leader (\S+)$", op.metrics(), re.MULTILINE)
    assert m, "no interlace_leader metric"
    return float(m.group(1))


def created_lines(op: OperatorProcess) -> list[str]:
    return [ln for ln in op.log_path.read_text(errors="replace").splitlines() if ": created RayJob " in ln]


def test_leader_killed_mid_burst_hands_over_without_duplicates(
    cluster: Cluster, operator_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    cp = cluster.cp
    grant_leases(cp, namespace, operator_kubeconfig)
    ops = {}
    for name in ("op-a", "op-b"):
        env = {"INTERLACE_LEADER_ELECTION": "true", "INTERLACE_LEADER_ELECTION_NAMESPACE": namespace,
               "POD_NAME": name, **TIMING}
        ops[name] = OperatorProcess(operator_kubeconfig, namespace, tmp_path / f"{name}.log", env).start()
    try:
        first = wait_for(lambda: lease_holder(cluster).split("_")[0], timeout=30, what="a leader")
        leader, standby = ops[first], ops["op-b" if first == "op-a" else "op-a"]
        wait_for(lambda: leader_metric(leader) == 1.0, timeout=10, what="interlace_leader 1 on the leader")
        assert leader_metric(standby) == 0.0

        # a first job, handled by the leader only
        cluster.apply(prunejob("warm"))
        wait_for(lambda: cluster.status("warm").get("attempts") == 1, what="the leader to start warm")
        assert created_lines(leader) and not created_lines(standby)
        assert "interlace_prunejob_info{" not in standby.metrics()  # standbys export no per-job series

        # a burst; SIGKILL the leader once it has started on it, with most of it still to do
        burst = [f"burst-{i:02d}" for i in range(30)]
        for name in burst:
            cluster.apply(prunejob(name, backoffLimit=2))
        wait_for(lambda: len(created_lines(leader)) >= 4, timeout=60, interval=0.02,
                 what="the leader to be half-way through the burst")
        leader.kill()
        killed_at = time.monotonic()
        done_by_old = len(created_lines(leader)) - 1
        # while nobody leads: one attempt fails, and a new PruneJob arrives
        cluster.patch_rayjob_status("warm-1", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed")
        cluster.apply(prunejob("late"))

        wait_for(lambda: lease_holder(cluster).startswith(standby.extra_env["POD_NAME"] + "_"), timeout=20,
                 interval=0.1, what="the standby to take the Lease over")
        took_over = time.monotonic() - killed_at
        assert took_over <= 4 + 6, took_over  # lease duration + retry periods (slack for a loaded machine)
        wait_for(lambda: leader_metric(standby) == 1.0, timeout=10, what="interlace_leader 1 on the new leader")

        def settled() -> bool:
            return all(cluster.status(n).get("attempts") == 1 for n in [*burst, "late"]) and \
                cluster.status("warm").get("attempts") == 2
        wait_for(settled, timeout=120, interval=0.5, what="the new leader to finish the burst and retry warm")

        # exactly one RayJob per attempt, whoever created it
        for name in [*burst, "late"]:
            assert rayjobs_of(cluster, name) == [f"{name}-1"], name
        assert rayjobs_of(cluster, "warm") == ["warm-2"]  # warm-1 failed: released before warm-2
        all_rayjobs = [r["metadata"]["name"] for r in cluster.list("rayjobs")]
        assert len(all_rayjobs) == len(set(all_rayjobs)) == len(burst) + 2
        # the rest was created by the new leader, or adopted when the old one died between creating a
        # RayJob and logging it (a second RayJob for that attempt would have shown up above)
        taken = [ln for ln in standby.log_path.read_text(errors="replace").splitlines()
                 if ": created RayJob burst-" in ln or "adopted RayJob burst-" in ln]
        assert done_by_old >= 3 and len(taken) >= len(burst) - done_by_old, (done_by_old, len(taken))

        # the killed replica restarts as a standby and writes nothing
        leader.start()
        time.sleep(3)
        assert lease_holder(cluster).startswith(standby.extra_env["POD_NAME"] + "_")
        assert leader_metric(leader) == 0.0
        before = len(cluster.list("rayjobs"))
        cluster.apply(prunejob("after"))
        wait_for(lambda: cluster.status("after").get("attempts") == 1, what="the new leader to handle after")
        assert len(cluster.list("rayjobs")) == before + 1
    finally:
        for op in ops.values():
            op.stop()


def test_a_clean_shutdown_hands_over_at_once(
    cluster: Cluster, operator_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """SIGTERM (a rollout, a drain): the leader releases the Lease; the standby leads within about one
    retry period instead of a whole lease duration."""
    cp = cluster.cp
    grant_leases(cp, namespace, operator_kubeconfig)
    env = {"INTERLACE_LEADER_ELECTION": "true", "INTERLACE_LEADER_ELECTION_NAMESPACE": namespace,
           "INTERLACE_LEASE_DURATION_SECONDS": "30", "INTERLACE_LEASE_RENEW_DEADLINE_SECONDS": "20",
           "INTERLACE_LEASE_RETRY_PERIOD_SECONDS": "0.5"}
    a = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "a.log", {**env, "POD_NAME": "a"}).start()
    wait_for(lambda: lease_holder(cluster).startswith("a_"), timeout=30, what="a to lead")
    b = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "b.log", {**env, "POD_NAME": "b"}).start()
    try:
        stopped = time.monotonic()
        a.stop()
        wait_for(lambda: lease_holder(cluster).startswith("b_"), timeout=10, interval=0.1, what="b to lead")
        took = time.monotonic() - stopped
        assert took < 10, f"{took:.1f} s\n{a.logs(40)}\n-----\n{b.logs(20)}"  # far less than the 30 s lease
        cluster.apply(prunejob("handed"))
        wait_for(lambda: cluster.status("handed").get("attempts") == 1, what="b to handle a PruneJob")
        assert "released Lease" in a.log_path.read_text()
    finally:
        a.stop()
        b.stop()


def test_a_replica_that_loses_the_lease_exits_to_restart_as_a_standby(
    cluster: Cluster, operator_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """Somebody else holds the Lease now (the API server was unreachable for too long, say): the former
    leader stops reconciling once its renew deadline passed and exits with status 1, so its pod
    restarts as a standby instead of writing next to the new leader."""
    grant_leases(cluster.cp, namespace, operator_kubeconfig)
    env = {"INTERLACE_LEADER_ELECTION": "true", "INTERLACE_LEADER_ELECTION_NAMESPACE": namespace,
           "POD_NAME": "a", **TIMING}
    a = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "a.log", env).start()
    try:
        wait_for(lambda: lease_holder(cluster).startswith("a_"), timeout=30, what="a to lead")
        cluster.kubectl("patch", "lease", LEASE, "--type=merge", "-p",
                        '{"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60}}')
        assert a.proc is not None
        code = a.proc.wait(20)
        assert code == 1, a.logs(30)
        text = a.log_path.read_text()
        assert "no longer the leader" in text and "lost the leader Lease" in text
        assert lease_holder(cluster) == "intruder"
    finally:
        a.stop()
