"""High availability in the chart and the manifests: the leader-election Role grants exactly
interlace_operator.leader.LEASE_RULES in the operator's namespace, the Deployment passes the Lease
settings, replicas > 1 need leader election (the values schema), and rollouts are RollingUpdate."""

from __future__ import annotations

from typing import Any

import pytest
from interlace_operator.leader import LEASE_RULES

from tests.packaging.tools import by_kind, kustomize, normalize, one, render, template


def lease_rbac(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    role = [o for o in by_kind(objs, "Role") if o["metadata"]["name"].endswith("-leader-election")]
    binding = [o for o in by_kind(objs, "RoleBinding") if o["metadata"]["name"].endswith("-leader-election")]
    assert len(role) == len(binding) == 1, (role, binding)
    return role[0], binding[0]


def env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_chart_grants_leases_in_its_namespace_only() -> None:
    objs = template({"replicaCount": 2, "leaderElection": {"enabled": True, "leaseDurationSeconds": 20}},
                    namespace="ops")
    role, binding = lease_rbac(objs)
    assert role["metadata"]["namespace"] == "ops" and normalize(role["rules"]) == normalize(LEASE_RULES)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "ops"}]
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    e = env(objs)
    assert e["INTERLACE_LEADER_ELECTION"] == "true"
    assert e["INTERLACE_LEADER_ELECTION_NAME"] == dep["metadata"]["name"]
    assert e["INTERLACE_LEASE_DURATION_SECONDS"] == "20"
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_chart_without_leader_election() -> None:
    objs = template({"leaderElection": {"enabled": False}})
    assert not [o for o in by_kind(objs, "Role") if o["metadata"]["name"].endswith("-leader-election")]
    assert env(objs)["INTERLACE_LEADER_ELECTION"] == "false"
    assert one(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("replicas", [2, 3])
def test_schema_refuses_replicas_without_leader_election(replicas: int) -> None:
    proc = render({"replicaCount": replicas, "leaderElection": {"enabled": False}}, check=False)
    assert proc.returncode != 0 and "/replicaCount" in proc.stderr, proc.stderr
    assert render({"replicaCount": replicas}).returncode == 0  # leader election is on by default


@pytest.mark.parametrize(("overlay", "ns"), [("cluster-wide", "interlace-system"), ("namespaced", "interlace")])
def test_manifests_grant_leases_and_enable_election(overlay: str, ns: str) -> None:
    objs = kustomize(overlay)
    role, binding = lease_rbac(objs)
    assert role["metadata"]["namespace"] == ns and normalize(role["rules"]) == normalize(LEASE_RULES)
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    e = env(objs)
    assert e["INTERLACE_LEADER_ELECTION"] == "true" and e["INTERLACE_LEADER_ELECTION_NAME"] == "interlace-operator"
    assert one(objs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
