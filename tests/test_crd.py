"""The CRD generated from interlace/schema/spec.py: committed files are current, and the schema is structural.

The API-server side (the real kube-apiserver accepting the CRD and rejecting bad PruneJobs with
messages naming the field) is in tests/operator/test_crd_server.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlace.schema import crd
from interlace.schema import spec as S
from interlace.schema.spec import SHARED_WORK_DIR_MESSAGE, PruneJobSpec, PruneJobStatus

REPO = Path(__file__).resolve().parents[1]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    return crd.build_crd()


@pytest.fixture(scope="module")
def root(built: dict[str, Any]) -> dict[str, Any]:
    return built["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_files_match_the_models() -> None:
    """Fails when spec.py changed without `python -m interlace.schema.crd --write`."""
    stale = crd.drift(REPO)
    assert not stale, f"regenerate with `python -m interlace.schema.crd --write`: {stale}"


def test_check_flag_exits_nonzero_on_drift(tmp_path: Path) -> None:
    crd.write(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "interlace.schema.crd", "--check", "--root", str(tmp_path)])
    assert ok.returncode == 0
    target = tmp_path / crd.MANIFEST_PATH
    target.write_text(target.read_text().replace("minimum: 1", "minimum: 2", 1))
    bad = subprocess.run(
        [sys.executable, "-m", "interlace.schema.crd", "--check", "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "manifests/base/crd.yaml is stale" in bad.stderr


def test_identity_names_and_subresources(built: dict[str, Any]) -> None:
    spec = built["spec"]
    assert built["metadata"]["name"] == "prunejobs.interlace.dev"
    assert spec["group"] == "interlace.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "PruneJob"
    assert spec["names"]["shortNames"] == ["pj"]
    assert spec["names"]["categories"] == ["ml"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Model", "Ratio", "Progress", "Retention", "Summary", "Age"]


def test_schema_is_structural(root: dict[str, Any]) -> None:
    """No $ref/anyOf/allOf/oneOf/const/title; every node has a type unless it preserves unknown fields;
    numeric exclusive bounds are OpenAPI-3.0 booleans; no `additionalProperties: false`."""
    for path, node in _walk(root):
        if path.endswith(".properties") or path.endswith("x-kubernetes-validations"):
            continue
        if "x-kubernetes-validations" in path or path.endswith("x-kubernetes-list-map-keys"):
            continue
        if path.endswith(".default") or ".default." in path or ".enum" in path:
            continue
        if ".anyOf" in path:
            continue
        if node.get("x-kubernetes-int-or-string"):  # a quantity: the one anyOf structural schemas allow
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            continue
        for bad in ("$ref", "anyOf", "allOf", "oneOf", "const", "title", "$defs", "nullable"):
            assert bad not in node, f"{path} has {bad}"
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True, path
        if node is not root and "x-kubernetes-preserve-unknown-fields" not in node:
            assert "type" in node, f"{path} has no type"


def test_every_model_field_is_declared(root: dict[str, Any]) -> None:
    """Undeclared status fields are silently dropped by the API server: every field must be there."""
    spec_props = root["properties"]["spec"]["properties"]
    status_props = root["properties"]["status"]["properties"]
    assert set(spec_props) == {f.alias or n for n, f in PruneJobSpec.model_fields.items()}
    assert set(status_props) == {f.alias or n for n, f in PruneJobStatus.model_fields.items()}
    ray_job = status_props["rayJob"]["properties"]
    assert {"name", "jobStatus", "jobDeploymentStatus", "endTime"} <= set(ray_job)
    progress = status_props["progress"]["properties"]
    assert {"percent", "step", "totalSteps", "loss", "tokensPerSecond", "etaSeconds", "lastUpdateTime"} <= set(progress)


def test_enums_defaults_and_bounds(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]
    pruning = spec["properties"]["pruning"]["properties"]
    assert pruning["strategy"]["enum"] == ["interlace", "oa", "tn", "random", "consecutive", "shortgpt", "auto"]
    assert pruning["strategy"]["default"] == "interlace"
    assert pruning["ratio"] == {
        **pruning["ratio"], "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "exclusiveMaximum": True
    }
    assert pruning["protectedLayers"]["x-kubernetes-list-type"] == "set"
    assert spec["properties"]["backoffLimit"]["default"] == 2
    assert spec["properties"]["finetune"]["default"] == {}  # nested defaults filled in by the server
    assert spec["properties"]["evaluation"]["properties"]["benchmarks"]["default"] == ["perplexity"]
    assert "default" not in spec["properties"]["activeDeadlineSeconds"]  # Optional = absent, not null
    assert spec["required"] == ["model", "output", "pruning"]  # a cluster job needs a durable output
    assert "default" not in spec["properties"]["output"]["properties"]["uri"]
    assert "description" in spec["properties"]["model"]["properties"]["source"]
    phase = root["properties"]["status"]["properties"]["phase"]
    assert "Finetuning" in phase["enum"] and "Suspended" in phase["enum"]
    conditions = root["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_cel_rules(root: dict[str, Any]) -> None:
    pruning = root["properties"]["spec"]["properties"]["pruning"]
    one_of, *auto = pruning["x-kubernetes-validations"]
    # exactly one amount: ratio, numLayers, a sweep's ratios or a retention target
    assert one_of["rule"] == (
        "(has(self.ratio) ? 1 : 0) + (has(self.numLayers) ? 1 : 0) + (has(self.ratios) ? 1 : 0)"
        " + (has(self.target) ? 1 : 0) == 1"
    )
    # strategy auto: candidates and probe only with it, never auto among the candidates, no sweep or target
    assert [(r["fieldPath"], r["message"]) for r in auto] == [
        (".candidates", S.CANDIDATES_WITHOUT_AUTO_MESSAGE), (".candidates", S.AUTO_IN_CANDIDATES_MESSAGE),
        (".probe", S.PROBE_WITHOUT_AUTO_MESSAGE), (".strategy", S.AUTO_SWEEP_MESSAGE),
        (".strategy", S.AUTO_TARGET_MESSAGE),
    ]
    needs_eval = next(r for r in root["properties"]["spec"]["x-kubernetes-validations"] if r.get("fieldPath") == ".pruning.strategy")
    assert needs_eval["message"] == S.AUTO_NEEDS_EVALUATION_MESSAGE and "self.evaluation.enabled" in needs_eval["rule"]
    assert pruning["properties"]["candidates"]["x-kubernetes-list-type"] == "set"
    # a cluster PruneJob's work files on a claim every Ray pod mounts (shared_work_dir_error)
    shared = next(r for r in root["properties"]["spec"]["x-kubernetes-validations"] if r.get("fieldPath") == ".resources.pvcName")
    assert shared["rule"] == "self.output.uri.startsWith('pvc://') || has(self.resources.pvcName)"
    assert shared["message"] == SHARED_WORK_DIR_MESSAGE
    (immutable,) = root["x-kubernetes-validations"]
    rule = immutable["rule"]
    assert "oldSelf.status.startTime" in rule
    assert "suspend" not in rule  # the one field that may change after the start
    for key in root["properties"]["spec"]["properties"]:
        if key != "suspend":
            assert f"self.spec.{key} " in rule or f"self.spec.{key})" in rule, key


def test_chart_copy_is_wrapped_and_kept() -> None:
    text = crd.render_chart()
    body = text.split("{{- if .Values.crds.install }}\n", 1)[1]
    assert body.endswith("{{- end }}\n")
    doc = yaml.safe_load(body.removesuffix("{{- end }}\n"))
    assert doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    manifest = yaml.safe_load(crd.render_manifest())
    del doc["metadata"]["annotations"]
    assert doc == manifest
