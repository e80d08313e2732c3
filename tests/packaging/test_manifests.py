"""The kustomize base and overlays, built by the pinned kubectl's kustomize (no cluster needed here;
test_cluster.py applies them to the real API server): objects, namespaces, RBAC = interlace_operator.rbac,
image tags = the chart's appVersion, and the same hardened Deployment as the chart renders.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.packaging.tools import (
    APP_VERSION,
    MANIFESTS,
    by_kind,
    kustomize,
    normalize,
    one,
    operator_objs,
    operator_rules,
    rules_yaml,
    split_rules,
    template,
)

OVERLAYS = {"cluster-wide": "interlace-system", "namespaced": "interlace"}


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(name) for name in OVERLAYS}


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(objs)["env"]}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_objects_and_namespace(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    ns = OVERLAYS[overlay]
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "Deployment", "Service"} <= kinds
    assert one(objs, "Namespace")["metadata"]["name"] == ns
    for o in objs:
        if o["kind"] in {"ServiceAccount", "Deployment", "Service", "Role", "RoleBinding"}:
            assert o["metadata"]["namespace"] == ns, (o["kind"], o["metadata"])
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}], b
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa


def test_base_crd_is_the_generated_file(built: dict[str, list[dict[str, Any]]]) -> None:
    generated = next(d for d in yaml.safe_load_all((MANIFESTS / "base" / "crd.yaml").read_text()) if d)
    crd = one(built["cluster-wide"], "CustomResourceDefinition")
    assert crd["spec"] == generated["spec"]


def test_cluster_wide_rbac(built: dict[str, list[dict[str, Any]]]) -> None:
    objs = built["cluster-wide"]
    assert normalize(one(operator_objs(objs), "ClusterRole")["rules"]) == normalize(operator_rules()), (
        "paste into manifests/base/rbac.yaml:\n" + rules_yaml(operator_rules())
    )
    assert not by_kind(operator_objs(objs), "Role")
    assert env(objs)["INTERLACE_WATCH_NAMESPACES"] == ""


def test_namespaced_rbac(built: dict[str, list[dict[str, Any]]]) -> None:
    objs = built["namespaced"]
    namespaced, cluster = split_rules()
    assert normalize(one(operator_objs(objs), "Role")["rules"]) == normalize(namespaced), rules_yaml(namespaced)
    assert normalize(one(operator_objs(objs), "ClusterRole")["rules"]) == normalize(cluster), rules_yaml(cluster)
    assert one(operator_objs(objs), "RoleBinding")["roleRef"]["kind"] == "Role"
    assert env(objs)["INTERLACE_WATCH_NAMESPACES"] == "interlace"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_images_follow_app_version(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    assert container(objs)["image"] == f"ghcr.io/interlace-dev/interlace-operator:{APP_VERSION}"
    assert env(objs)["INTERLACE_RUNTIME_IMAGE"] == f"ghcr.io/interlace-dev/interlace-runtime:{APP_VERSION}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_same_pod_as_the_chart(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """kustomize and Helm users get the same hardened operator container."""
    chart_c = container(template())
    kust_c = container(built[overlay])
    for key in ("securityContext", "livenessProbe", "readinessProbe", "resources", "ports", "volumeMounts",
                "imagePullPolicy"):
        assert kust_c[key] == chart_c[key], key
    assert [e["name"] for e in kust_c["env"]] == [e["name"] for e in chart_c["env"]]
    chart_pod = one(template(), "Deployment")["spec"]
    kust_pod = one(built[overlay], "Deployment")["spec"]
    assert kust_pod["strategy"] == chart_pod["strategy"]
    assert kust_pod["template"]["spec"]["securityContext"] == chart_pod["template"]["spec"]["securityContext"]
    assert kust_pod["template"]["spec"]["volumes"] == chart_pod["template"]["spec"]["volumes"]
