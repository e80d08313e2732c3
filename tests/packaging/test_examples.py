"""The example PruneJobs validate with the spec models and, with the CRD installed, with the API server.

The paper's settings are asserted, not just parsed: 36-layer Qwen3-VL drops 7 layers at 20% and 9 at
25%, 1% of FineVision, AdamW lr 1e-5 with a cosine schedule, effective batch 32, max length 8192.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlace.schema.spec import PruneJob, load_prunejob, parse_prunejob

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
PRUNEJOB_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("argocd"))
QWEN3_VL_LAYERS = 36


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_the_expected_examples_exist() -> None:
    names = [yaml.safe_load((EXAMPLES / f).read_text())["metadata"]["name"] for f in PRUNEJOB_FILES]
    assert len(set(names)) == len(names), names
    assert {"qwen3-vl-4b-20.yaml", "qwen3-vl-8b-25.yaml", "dry-run-plan.yaml", "local-smoke.yaml"} <= set(
        PRUNEJOB_FILES
    )


@pytest.mark.parametrize("name", PRUNEJOB_FILES)
def test_example_parses(name: str) -> None:
    job = parse_prunejob(load(name))
    assert load_prunejob(EXAMPLES / name).spec == job.spec
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job.metadata.name) and len(job.metadata.name) <= 63
    assert job.status is None


@pytest.mark.parametrize(
    ("name", "model", "ratio", "n_drop"),
    [
        ("qwen3-vl-4b-20.yaml", "Qwen/Qwen3-VL-4B-Instruct", 0.2, 7),
        ("qwen3-vl-8b-25.yaml", "Qwen/Qwen3-VL-8B-Instruct", 0.25, 9),
    ],
)
def test_paper_settings(name: str, model: str, ratio: float, n_drop: int) -> None:
    spec = parse_prunejob(load(name)).spec
    assert spec.model.source == model
    assert spec.pruning.ratio == ratio and spec.pruning.strategy == "interlace"
    assert spec.pruning.layers_to_drop(QWEN3_VL_LAYERS) == n_drop
    ft = spec.finetune
    assert ft.enabled and ft.data.path == "HuggingFaceM4/FineVision" and ft.data.fraction == 0.01
    assert ft.data.sampling == "first" and ft.data.max_images == 3 and ft.data.max_turns == 3
    assert ft.data.max_pixels == 50176
    assert ft.learning_rate == 1e-5 and ft.lr_scheduler == "cosine" and ft.warmup_ratio == 0.03
    assert ft.weight_decay == 0 and ft.max_grad_norm == 1.0 and ft.epochs == 1
    assert ft.per_device_batch_size * ft.gradient_accumulation_steps == 32
    assert ft.max_length == 8192 and ft.precision == "bf16" and ft.gradient_checkpointing and ft.packing
    assert spec.pruning.freeze_lm_head
    assert spec.resources.gpus_per_worker >= 1 and not spec.dry_run
    assert spec.model.attn_implementation == "sdpa"  # flash-attn is in no image we build


@pytest.mark.parametrize(("name", "model"), [("qwen3-vl-4b-20.yaml", "Qwen3-VL-4B"), ("qwen3-vl-8b-25.yaml", "Qwen3-VL-8B")])
def test_paper_examples_fit_their_gpu_memory(name: str, model: str) -> None:
    """The pre-launch memory check (worst case, before any plan) accepts the examples; the paper's
    micro-batch of 16 x 8192 tokens it refuses, naming gpuMemory."""
    from interlace.errors import InterlaceError
    from interlace.runtime.placement import check_memory, count_params
    from tests.core.test_placement_checks import qwen3_vl_config

    spec = parse_prunejob(load(name)).spec
    config = qwen3_vl_config(model)
    n = count_params(config)
    est = check_memory(spec, config, total_params=n)
    assert est is not None and est.total < 80 * 2**30
    spec.finetune.per_device_batch_size, spec.finetune.gradient_accumulation_steps = 16, 2
    with pytest.raises(InterlaceError, match=r"spec\.resources\.gpuMemory is 80Gi"):
        check_memory(spec, config, total_params=n)


def test_dry_run_example_is_a_dry_run() -> None:
    assert parse_prunejob(load("dry-run-plan.yaml")).spec.dry_run is True


def test_local_example_needs_no_hub_and_no_gpu() -> None:
    spec = parse_prunejob(load("local-smoke.yaml")).spec
    assert spec.model.source.startswith("builtin:")
    for data in (spec.calibration.data, spec.finetune.data, spec.evaluation.data):
        assert data is None or data.path.startswith("builtin:")
    assert spec.resources.gpus_per_worker == 0
    assert spec.finetune.max_steps is not None and spec.finetune.max_steps <= 5
    assert spec.output.uri.startswith("file://")


def test_argocd_applications_point_at_real_paths() -> None:
    apps = [d for d in yaml.safe_load_all((EXAMPLES / "argocd-application.yaml").read_text()) if d]
    assert {a["kind"] for a in apps} == {"Application"}
    assert all(a["apiVersion"] == "argoproj.io/v1alpha1" for a in apps)
    for app in apps:
        src = app["spec"]["source"]
        path = REPO / src["path"]
        assert path.is_dir(), src["path"]
        include = src.get("directory", {}).get("include")
        if include:
            for name in include.strip("{}").split(","):
                assert (path / name).is_file(), name
                parse_prunejob(yaml.safe_load((path / name).read_text()))
        if "helm" in src:
            assert (path / "Chart.yaml").is_file()
    chart_app = next(a for a in apps if "helm" in a["spec"]["source"])
    assert "ServerSideApply=true" in chart_app["spec"]["syncPolicy"]["syncOptions"]
    jobs_app = next(a for a in apps if "directory" in a["spec"]["source"])
    assert jobs_app["spec"]["syncPolicy"]["automated"]["prune"] is False


def test_a_typo_in_an_example_would_be_caught() -> None:
    """The validation above is live: an unknown field fails with the field's path."""
    doc = load("qwen3-vl-4b-20.yaml")
    doc["spec"]["finetune"]["learningRat"] = 1e-4
    with pytest.raises(Exception, match=r"spec\.finetune\.learningRat"):
        parse_prunejob(doc)


# ------------------------------------------------------------------------------ the real API server


@pytest.mark.cluster
def test_examples_accepted_by_the_api_server(control_plane: Any, namespace: str) -> None:
    """With the generated CRD installed, the API server's structural schema accepts every example
    (server-side dry run) and rejects one with a wrong type."""
    crd = REPO / "manifests" / "base" / "crd.yaml"
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    control_plane.wait_crds_established("prunejobs.interlace.dev", timeout=60)
    for name in PRUNEJOB_FILES:
        doc = load(name)
        if doc["spec"]["output"]["uri"].startswith("file://"):
            # local mode only: a cluster PruneJob needs a durable output
            proc = control_plane.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                                         input=json.dumps(doc), check=False)
            assert proc.returncode != 0 and "spec.output.uri" in proc.stderr, proc.stderr
            assert "durable output" in proc.stderr, proc.stderr
            doc["spec"]["output"]["uri"] = "s3://models/smoke"
            # ... and, with an s3:// output, a claim for the work files every Ray pod reads
            doc["spec"].setdefault("resources", {})["pvcName"] = "interlace-work"
        proc = control_plane.kubectl(
            "create", "--dry-run=server", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(doc)
        )
        created = json.loads(proc.stdout)
        assert created["kind"] == "PruneJob" and created["metadata"]["namespace"] == namespace
        # what the server stored (with its defaults) is still a valid PruneJob for the CLI
        PruneJob.model_validate({k: created[k] for k in ("apiVersion", "kind", "spec")})
    bad = load("qwen3-vl-4b-20.yaml")
    bad["spec"]["pruning"]["ratio"] = "twenty percent"
    proc = control_plane.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False
    )
    assert proc.returncode != 0
    assert "spec.pruning.ratio" in proc.stderr, proc.stderr


def test_argocd_chart_values_pass_the_chart_schema() -> None:
    """The Application's inline Helm values render with the chart (values.schema.json accepts them)."""
    from tests.packaging.tools import one, template

    apps = [d for d in yaml.safe_load_all((EXAMPLES / "argocd-application.yaml").read_text()) if d]
    helm_src = next(a["spec"]["source"]["helm"] for a in apps if "helm" in a["spec"]["source"])
    objs = template(helm_src.get("valuesObject"), release=helm_src["releaseName"])
    assert one(objs, "Deployment")["metadata"]["name"] == "interlace-operator"
