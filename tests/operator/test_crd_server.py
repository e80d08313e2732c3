"""The generated CRD in the real kube-apiserver: it is accepted (structural, CEL cost within budget),
defaults are applied, and invalid PruneJobs are rejected with a message naming the field."""

from __future__ import annotations

import json

import pytest

from tests.operator.conftest import Cluster, prunejob

# what the CEL rule on spec.pruning says (interlace.schema.spec.AMOUNT_MESSAGE)
ONE_AMOUNT = (
    "exactly one of spec.pruning.ratio, spec.pruning.numLayers, "
    "spec.pruning.ratios and spec.pruning.target"
)

pytestmark = pytest.mark.cluster


def _apply_error(cluster: Cluster, obj: dict) -> str:
    out = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert out.returncode != 0, f"accepted: {obj}"
    return out.stderr


@pytest.mark.parametrize(
    ("spec_patch", "expected"),
    [
        ({"pruning": {"ratio": "a lot"}}, "spec.pruning.ratio"),
        ({"pruning": {"ratio": 1.5}}, "spec.pruning.ratio"),
        ({"pruning": {"ratio": 0}}, "spec.pruning.ratio"),
        ({"pruning": {"ratio": 0.2, "strategy": "magic"}}, "spec.pruning.strategy"),
        ({"pruning": {"ratio": 0.2, "numLayers": 4}}, ONE_AMOUNT),
        ({"pruning": {}}, ONE_AMOUNT),
        ({"pruning": {"ratios": [0.1, 0.2], "target": {"minRetention": 0.9}}}, ONE_AMOUNT),
        ({"pruning": {"numLayers": 2, "protectedLayers": [1, 1]}}, "spec.pruning.protectedLayers"),
        ({"resources": {"workers": 0}}, "spec.resources.workers"),
        ({"model": {"source": ""}}, "spec.model.source"),
        ({"backoffLimit": "three"}, "spec.backoffLimit"),
        ({"finetune": {"unknownKnob": 1}}, "unknownKnob"),
    ],
)
def test_invalid_prunejobs_are_rejected_naming_the_field(cluster: Cluster, spec_patch: dict, expected: str) -> None:
    obj = prunejob("bad")
    obj["spec"].update(spec_patch)
    err = _apply_error(cluster, obj)
    assert expected in err, err


def test_defaults_are_applied_by_the_server(cluster: Cluster) -> None:
    obj = prunejob("defaults")
    obj["spec"]["resources"] = {"pvcName": "work"}  # only what an s3:// output needs on a cluster
    cluster.apply(obj)
    spec = cluster.get("prunejob", "defaults")["spec"]
    assert spec["pruning"]["strategy"] == "interlace"
    assert spec["finetune"]["learningRate"] == 1e-5
    assert spec["finetune"]["data"]["fraction"] == 0.01
    assert spec["resources"]["gpusPerWorker"] == 1
    assert spec["evaluation"]["benchmarks"] == ["perplexity"]
    assert spec["backoffLimit"] == 2 and spec["suspend"] is False
    assert "activeDeadlineSeconds" not in spec


def test_spec_is_frozen_once_started_except_suspend(cluster: Cluster) -> None:
    cluster.apply(prunejob("frozen"))
    # before the start anything may change
    cluster.kubectl("patch", "prunejob", "frozen", "--type=merge", "-p", '{"spec": {"pruning": {"ratio": 0.3}}}')
    # what the operator writes when it accepts the job
    cluster.kubectl("patch", "prunejob", "frozen", "--subresource=status", "--type=merge",
                    "-p", '{"status": {"startTime": "2026-01-01T00:00:00Z", "phase": "Pending"}}')
    for patch in ('{"spec": {"pruning": {"ratio": 0.4}}}', '{"spec": {"backoffLimit": 5}}',
                  '{"spec": {"activeDeadlineSeconds": 3600}}', '{"spec": {"model": {"source": "other/model"}}}'):
        out = cluster.kubectl("patch", "prunejob", "frozen", "--type=merge", "-p", patch, check=False)
        assert out.returncode != 0, patch
        assert "spec is immutable once the job has started" in out.stderr, out.stderr
        assert "spec" in out.stderr
    cluster.kubectl("patch", "prunejob", "frozen", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    assert cluster.get("prunejob", "frozen")["spec"]["suspend"] is True
    # metadata stays editable
    cluster.kubectl("label", "prunejob", "frozen", "team=vision")


def test_undeclared_status_fields_do_not_exist_but_declared_ones_persist(cluster: Cluster) -> None:
    cluster.apply(prunejob("stat"))
    status = {
        "stage": "Finetuning",
        "progress": {"percent": 50.0, "step": 5, "totalSteps": 10, "tokensPerSecond": 1234.5, "etaSeconds": 60.0,
                     "lastUpdateTime": "2026-01-01T00:00:00Z", "metrics": [{"name": "loss", "value": 1.5}]},
        "rayJob": {"name": "stat-1", "jobStatus": "RUNNING", "jobDeploymentStatus": "Running",
                   "endTime": "2026-01-01T00:00:00Z"},
        "results": {"paramsBefore": 4000000000, "paramsAfter": 3000000000, "prefillSpeedup": 1.3},
        "somethingElse": 1,
    }
    cluster.kubectl("patch", "prunejob", "stat", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))
    got = cluster.status("stat")
    expected = {k: v for k, v in status.items() if k != "somethingElse"}
    for key, value in expected.items():
        for k, v in value.items() if isinstance(value, dict) else [(None, value)]:
            assert (got[key][k] if k else got[key]) == v, (key, k)
    assert "somethingElse" not in got
