"""The users' ClusterRoles (interlace_operator.user_roles): the chart and the kustomize base carry
exactly them, and on the real API server a namespace editor (a user bound to the built-in `edit`
ClusterRole in one namespace) can create PruneJobs there, a viewer can only read them, through
Kubernetes' ClusterRole aggregation, with no PruneJob-specific binding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from interlace_operator.user_roles import EDITOR, VIEWER, cluster_roles

from tests.packaging.tools import MANIFESTS, by_kind, kustomize, normalize, template


def user_roles(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in by_kind(objs, "ClusterRole")
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == "user-roles"}


def check_roles(found: dict[str, dict[str, Any]]) -> None:
    want = {r["metadata"]["name"]: r for r in cluster_roles()}
    assert sorted(found) == sorted(want) == sorted([EDITOR, VIEWER])
    for name, role in want.items():
        assert normalize(found[name]["rules"]) == normalize(role["rules"]), name
        assert role["metadata"]["labels"].items() <= found[name]["metadata"]["labels"].items(), name


def test_chart_renders_the_user_roles() -> None:
    check_roles(user_roles(template()))
    check_roles(user_roles(template({"watchNamespaces": ["team-a"]})))  # cluster-wide in both modes
    assert not user_roles(template({"rbac": {"userRoles": False}}))


@pytest.mark.parametrize("overlay", ["cluster-wide", "namespaced"])
def test_manifests_carry_the_user_roles(overlay: str) -> None:
    check_roles(user_roles(kustomize(overlay)))


def test_editor_never_writes_status() -> None:
    for role in cluster_roles():
        for rule in role["rules"]:
            if any(r.endswith("/status") for r in rule["resources"]):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, role["metadata"]["name"]


# ------------------------------------------------------------------------------ the real API server


@pytest.mark.cluster
def test_namespace_editor_and_viewer_on_the_api_server(control_plane: Any, namespace: str) -> None:
    from tests.packaging.test_cluster import ensure_crd

    cp = control_plane
    ensure_crd(cp)
    other = cp.create_namespace(prefix="roles-other")
    roles = MANIFESTS / "base" / "user-roles.yaml"
    editor, viewer = cp.restricted_users[:2]  # static-token users with no permissions of their own
    cp.kubectl("apply", "--server-side", "--field-manager=interlace-tests", "-f", str(roles))
    try:
        for user, builtin in ((editor, "edit"), (viewer, "view")):
            cp.kubectl("create", "rolebinding", f"{user}-{builtin}", f"--clusterrole={builtin}", f"--user={user}",
                       "-n", namespace)

        def can(user: str, verb: str, resource: str, ns: str, sub: str = "") -> bool:
            args = ["auth", "can-i", verb, resource, "-n", ns] + ([f"--subresource={sub}"] if sub else [])
            proc = cp.kubectl(*args, user=user, check=False)
            assert proc.stdout.strip() in {"yes", "no"}, (args, proc.stdout, proc.stderr)
            return proc.stdout.strip() == "yes"

        pj = "prunejobs.interlace.dev"
        # the aggregation controller copies the rules into edit/view asynchronously: wait for it
        from tests.operator.conftest import wait_for

        wait_for(lambda: can(editor, "create", pj, namespace) and can(viewer, "list", pj, namespace),
                 timeout=60, what="the aggregated edit/view roles to include PruneJobs")
        rows = [
            (editor, verb, pj, namespace, "", True)
            for verb in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
        ] + [
            (editor, "get", pj, namespace, "status", True),
            (editor, "patch", pj, namespace, "status", False),  # status belongs to the operator
            (editor, "update", pj, namespace, "status", False),
            (editor, "create", pj, other, "", False),  # only where the user is an editor
            (viewer, "get", pj, namespace, "", True),
            (viewer, "list", pj, namespace, "", True),
            (viewer, "watch", pj, namespace, "", True),
            (viewer, "get", pj, namespace, "status", True),
            (viewer, "create", pj, namespace, "", False),
            (viewer, "delete", pj, namespace, "", False),
            (viewer, "list", pj, other, "", False),
        ]
        wrong = [r for r in rows if can(r[0], r[1], r[2], r[3], r[4]) != r[5]]
        assert not wrong, wrong

        # and for real: the editor creates and deletes a PruneJob with their own credentials
        body = {"apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "mine"},
                "spec": {"model": {"source": "builtin:smollm2-135m"}, "pruning": {"numLayers": 2}, "dryRun": True,
                         "output": {"uri": "s3://bucket/mine"},  # a cluster PruneJob needs a durable output
                         "resources": {"pvcName": "work"}}}  # ... and a claim for its work files
        cp.kubectl("create", "-n", namespace, "-f", "-", user=editor, input=json.dumps(body))
        assert cp.kubectl("get", "prunejob", "mine", "-n", namespace, "-o", "name", user=viewer).stdout.strip()
        denied = cp.kubectl("delete", "prunejob", "mine", "-n", namespace, user=viewer, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
        cp.kubectl("delete", "prunejob", "mine", "-n", namespace, user=editor)
    finally:
        cp.kubectl("delete", "-f", str(roles), "--ignore-not-found", "--wait=false", check=False)
        cp.delete_namespace(other)
