"""The invalid-PruneJob corpus against the real API server with the generated CRD, and a PruneJob at
every integer maximum next to a valid one with the operator and KubeRay running.

Every case is refused at admission (field validation Strict, as kubectl does), naming the same field
as the CLI (tests/core/test_invalid_corpus.py): nothing is stored, so nothing reaches the operator or
KubeRay. The cases go through one API client, one request each, so the whole corpus takes seconds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.invalid_prunejobs import CASES, maximal_doc, valid_doc
from tests.operator.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster


def _api(control_plane: Any) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(control_plane.admin_kubeconfig), client_configuration=cfg)
    return client.CustomObjectsApi(client.ApiClient(cfg))


def test_every_invalid_prunejob_is_refused_at_admission_naming_the_field(cluster: Cluster, control_plane) -> None:
    from kubernetes.client.exceptions import ApiException

    api = _api(control_plane)
    sent, wrong = 0, []
    for i, case in enumerate(c for c in CASES if c.json):
        doc = case.doc(name=f"bad-{i}")
        try:
            api.create_namespaced_custom_object(
                "interlace.dev", "v1alpha1", cluster.ns, "prunejobs", doc, field_validation="Strict"
            )
        except ApiException as err:
            body = json.loads(err.body or "{}")
            message = body.get("message", "")
            if err.status not in (400, 422) or case.field not in message:
                wrong.append(f"{case.id}: HTTP {err.status}: {message}")
        else:
            wrong.append(f"{case.id}: accepted")
        sent += 1
    assert sent >= 100
    assert wrong == [], "\n".join(wrong)
    assert cluster.list("prunejobs") == []
    assert cluster.list("rayjobs") == []

    # the valid document of the corpus, and the one at every integer maximum, are accepted
    for doc in (valid_doc("ok"), maximal_doc("maximal")):
        api.create_namespaced_custom_object(
            "interlace.dev", "v1alpha1", cluster.ns, "prunejobs", doc, field_validation="Strict", dry_run="All"
        )


def test_a_maximal_prunejob_does_not_stop_kuberay_for_the_others(cluster: Cluster, run_operator) -> None:
    """Every integer field at its maximum reaches a RayJob that KubeRay can read; a valid PruneJob
    next to it still gets its Ray cluster (before the bounds, one int32 overflow made KubeRay fail to
    list every RayJob in the cluster)."""
    run_operator()
    cluster.apply(maximal_doc("maximal"))
    cluster.apply(valid_doc("neighbour"))
    for name in ("maximal-1", "neighbour-1"):
        rc = wait_for(
            lambda n=name: ((cluster.get("rayjob", n) or {}).get("status") or {}).get("rayClusterName"),
            timeout=90, what=f"KubeRay to reconcile RayJob {name}",
        )
        assert rc
    rj = cluster.get("rayjob", "maximal-1")
    assert rj["spec"]["ttlSecondsAfterFinished"] == 2**31 - 1
    assert 0 < rj["spec"]["activeDeadlineSeconds"] <= 2**31 - 1
    assert cluster.status("neighbour")["rayJob"]["name"] == "neighbour-1"
