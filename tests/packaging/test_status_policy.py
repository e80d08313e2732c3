"""The status-writer ValidatingAdmissionPolicy as the chart and the kustomize overlays ship it: the
same policy as interlace_operator.rbac.status_policy, naming the operator's own ServiceAccount, bound
to the watched namespaces (tests/operator/test_hardening_cluster.py shows it refusing a forged patch)."""

from __future__ import annotations

from interlace_operator.rbac import status_policy

from tests.packaging.tools import kustomize, one, template


def test_chart_renders_the_policy_for_its_own_service_account() -> None:
    objs = template()
    policy, binding = one(objs, "ValidatingAdmissionPolicy"), one(objs, "ValidatingAdmissionPolicyBinding")
    sa = one(objs, "ServiceAccount")["metadata"]
    want, want_binding = status_policy(operator_user=f"system:serviceaccount:{sa['namespace']}:{sa['name']}",
                                       name=policy["metadata"]["name"])
    assert policy["spec"] == want["spec"]
    assert binding["spec"] == want_binding["spec"]  # cluster-wide: every namespace
    assert policy["metadata"]["name"].endswith("-status-writers")


def test_chart_binds_only_the_watched_namespaces_and_can_be_left_out() -> None:
    objs = template({"watchNamespaces": ["team-a", "team-b"]})
    selector = one(objs, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"]["namespaceSelector"]
    assert selector == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]}
    kinds = {o["kind"] for o in template({"jobPolicy": {"statusPolicy": False}})}
    assert "ValidatingAdmissionPolicy" not in kinds and "ValidatingAdmissionPolicyBinding" not in kinds


def test_overlays_name_their_operator_and_namespace() -> None:
    for overlay, ns in (("cluster-wide", "interlace-system"), ("namespaced", "interlace")):
        objs = kustomize(overlay)
        policy, binding = one(objs, "ValidatingAdmissionPolicy"), one(objs, "ValidatingAdmissionPolicyBinding")
        selector = {"matchLabels": {"kubernetes.io/metadata.name": ns}} if overlay == "namespaced" else None
        want, want_binding = status_policy(operator_user=f"system:serviceaccount:{ns}:interlace-operator",
                                           namespace_selector=selector)
        assert policy["spec"] == want["spec"], overlay
        assert binding["spec"] == want_binding["spec"], overlay
