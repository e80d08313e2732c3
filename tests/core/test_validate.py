"""`interlace validate`: accepts every shipped example, rejects a corpus of invalid PruneJobs with the
field named, each in a fresh process in well under 10 s, without importing torch, transformers or ray."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlace.cli import main
from interlace.pipeline.validate import validate

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    sorted((REPO / "examples").glob("*.yaml"))
    + [p for p in (REPO / "manifests" / "examples").glob("*.yaml") if not p.name.startswith("argocd")]
)
BASE = yaml.safe_load((REPO / "examples" / "prunejob-local.yaml").read_text())
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return apply


def _unsupported_model(doc: dict[str, Any], tmp: Path) -> None:
    d = tmp / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    doc["spec"]["model"]["source"] = str(d)


def _small_model(doc: dict[str, Any], tmp: Path) -> None:
    d = tmp / "small"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    doc["spec"]["model"]["source"] = str(d)
    doc["spec"]["pruning"] = {"numLayers": 2, "protectedLayers": [0, 6]}


# (name, mutation of examples/prunejob-local.yaml, the field the error must name)
INVALID: list[tuple[str, Callable[..., None], str]] = [
    ("typo", _set("spec.finetune.learningRat", 1e-4), "spec.finetune.learningRat"),
    ("ratio-too-big", _set("spec.pruning.ratio", 1.5), "spec.pruning.ratio"),
    ("ratio-not-number", _set("spec.pruning.ratio", "twenty percent"), "spec.pruning.ratio"),
    ("ratio-and-num-layers", _set("spec.pruning.numLayers", 3), "spec.pruning"),
    ("ratio-drops-nothing", _set("spec.pruning.ratio", 0.01), "spec.pruning.ratio"),
    ("drops-every-layer", lambda d: d["spec"].update(pruning={"numLayers": 30}), "spec.pruning.numLayers"),
    ("protected-outside", _set("spec.pruning.protectedLayers", [40]), "spec.pruning.protectedLayers"),
    ("protected-duplicates", _set("spec.pruning.protectedLayers", [1, 1]), "spec.pruning.protectedLayers"),
    ("workers-zero", _set("spec.resources.workers", 0), "spec.resources.workers"),
    ("no-model", lambda d: d["spec"].pop("model"), "spec.model"),
    ("wrong-kind", lambda d: d.update(kind="Job"), "document"),
    ("wrong-api-version", lambda d: d.update(apiVersion="interlace.dev/v1"), "apiVersion"),
    ("model-dir-missing", _set("spec.model.source", "./no/such/model"), "spec.model.source"),
    ("model-builtin-unknown", _set("spec.model.source", "builtin:gpt5"), "spec.model.source"),
    ("model-bad-hub-id", _set("spec.model.source", "not a model id"), "spec.model.source"),
    ("model-unsupported", _unsupported_model, "spec.model.source"),
    ("model-layers", _small_model, "spec.pruning.protectedLayers"),
    ("data-missing", _set("spec.finetune.data.path", "/no/such/shards"), "spec.finetune.data.path"),
    (
        "data-builtin-unknown",
        _set("spec.calibration.data.path", "builtin:klingon"),
        "spec.calibration.data.path",
    ),
    (
        "finevision-subset",
        lambda d: d["spec"]["finetune"].update(
            data={"path": "HuggingFaceM4/FineVision", "subsets": ["nope"]}
        ),
        "spec.finetune.data.subsets",
    ),
    ("fraction-zero", _set("spec.evaluation.data.fraction", 0), "spec.evaluation.data.fraction"),
    (
        "ood-data-missing",
        _set("spec.evaluation.outOfDomainData.path", "/no/such/shards"),
        "spec.evaluation.outOfDomainData.path",
    ),
    (
        "ood-builtin-unknown",
        _set("spec.evaluation.outOfDomainData.path", "builtin:klingon"),
        "spec.evaluation.outOfDomainData.path",
    ),
    (
        "benchmark-missing",
        _set("spec.evaluation.benchmarks", ["/no/such/vqa.jsonl"]),
        "spec.evaluation.benchmarks[0]",
    ),
    ("output-scheme", _set("spec.output.uri", "ftp://host/x"), "spec.output.uri"),
    (
        "output-pvc-unmounted",
        _set("spec.output.uri", "pvc://models/run"),
        "spec.resources.pvcName|spec.output.uri",
    ),
    (
        "output-pvc-other-claim",
        lambda d: (d["spec"]["output"].update(uri="pvc://a/x"), d["spec"]["resources"].update(pvcName="b")),
        "spec.output.uri",
    ),
    ("output-hub-repo", _set("spec.output.hub", {"repo": "no-slash"}), "spec.output.hub.repo"),
    ("output-hf-repo", _set("spec.output.uri", "hf://a--b/c"), "spec.output.uri"),
]


def _write_invalid(name: str, mutate: Callable[..., None], tmp: Path) -> Path:
    doc = copy.deepcopy(BASE)
    if mutate.__code__.co_argcount == 2:
        mutate(doc, tmp)
    else:
        mutate(doc)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "interlace.cli", "validate", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=60,
    )
    return r, time.monotonic() - t0


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_accepts_every_shipped_example(path: Path) -> None:
    report = validate(path)
    assert report.ok, [str(e) for e in report.errors]
    assert report.job is not None


def test_cluster_mode_accepts_the_cluster_examples() -> None:
    for name in ("qwen3-vl-4b-20.yaml", "qwen3-vl-8b-25.yaml", "dry-run-plan.yaml"):
        report = validate(REPO / "manifests" / "examples" / name, cluster=True)
        assert report.ok, (name, [str(e) for e in report.errors])


def test_cli_accepts_all_shipped_examples_at_once_in_seconds() -> None:
    args = [a for p in SHIPPED for a in ("-f", str(p))]
    r, seconds = _run(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("valid PruneJob") == len(SHIPPED)
    assert "drops 6 of 30 layers" in r.stdout  # the builtin model's layer count is known offline
    assert seconds < 10, seconds


@pytest.mark.parametrize(("name", "mutate", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_rejects_invalid_with_the_field_named(
    tmp_path: Path, name: str, mutate: Callable[..., None], field: str
) -> None:
    path = _write_invalid(name, mutate, tmp_path)
    report = validate(path)
    assert not report.ok
    fields = field.split("|")  # alternatives: the spec models may name the other side of a rule
    assert set(fields) & {e.field for e in report.errors}, [str(e) for e in report.errors]
    # the CLI, in its own process: exit 2, the field on stderr, well within 10 s
    r, seconds = _run("-f", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert any(f"error: {f}:" in r.stderr for f in fields), r.stderr
    assert seconds < 10, seconds


def test_every_error_is_reported_not_only_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["pruning"]["ratio"] = 0.01  # drops nothing of 30 layers
    doc["spec"]["finetune"]["data"]["path"] = "/no/such/shards"
    doc["spec"]["evaluation"]["benchmarks"] = ["/no/such/vqa.jsonl"]
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", "-f", str(path), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and out["file"] == str(path)
    fields = {e["field"] for e in out["errors"]}
    assert {"spec.pruning.ratio", "spec.finetune.data.path", "spec.evaluation.benchmarks[0]"} <= fields, out
    # schema errors are all collected as well
    doc = copy.deepcopy(BASE)
    doc["spec"]["resources"]["workers"] = 0
    doc["spec"]["finetune"]["epochs"] = -1
    path.write_text(yaml.safe_dump(doc))
    fields = {e.field for e in validate(path).errors}
    assert {"spec.resources.workers", "spec.finetune.epochs"} <= fields


def test_json_report_of_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(REPO / "examples" / "prunejob-local.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True and out["errors"] == [] and out["mode"] == "local"
    assert out["name"] == "smollm2-interlace-20" and out["numLayers"] == 30 and out["layersToDrop"] == 6


def test_cluster_mode_requires_a_durable_output(tmp_path: Path) -> None:
    report = validate(REPO / "examples" / "prunejob-local.yaml", cluster=True)
    assert [e.field for e in report.errors] == ["spec.output.uri"]
    assert "durable" in report.errors[0].message
    doc = copy.deepcopy(BASE)
    doc["spec"]["output"] = {"uri": "s3://bucket/run"}
    doc["spec"]["resources"]["pvcName"] = "work"  # the work files every Ray pod reads
    doc["spec"]["finetune"]["data"]["path"] = "/data/shards"  # a path in the pods: a warning here
    report = validate(doc, cluster=True)
    assert report.ok, [str(e) for e in report.errors]
    assert {"spec.output.s3Secret", "spec.finetune.data.path"} <= {w.field for w in report.warnings}


@pytest.mark.parametrize("uri", ["s3://bucket/run", "hf://my-org/smollm2-pruned"])
def test_cluster_mode_requires_shared_storage_for_the_work_files(tmp_path: Path, uri: str) -> None:
    """An s3:// / hf:// output without spec.resources.pvcName: the Ray workers could not read the
    pruned model. `validate --cluster` refuses it (exit 2, the field named) with the very message
    the operator's InvalidSpec and `interlace run` give; a local validate accepts it."""
    from interlace.schema.spec import SHARED_WORK_DIR_MESSAGE

    doc = copy.deepcopy(BASE)
    doc["spec"]["output"] = {"uri": uri}
    assert validate(doc).ok
    report = validate(doc, cluster=True)
    assert [(e.field, e.message) for e in report.errors] == [
        ("spec.resources.pvcName", SHARED_WORK_DIR_MESSAGE)
    ]
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(doc))
    r, _ = _run("--cluster", "-f", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "error: spec.resources.pvcName:" in r.stderr and "ReadWriteMany" in r.stderr, r.stderr
    assert _run("-f", str(path))[0].returncode == 0


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    r, _ = _run("-f", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    r, _ = _run("-f", str(bad), "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout)["errors"][0]["field"] == "document"


def test_validate_imports_no_torch_ray_or_transformers() -> None:
    code = (
        "import sys\nfrom interlace.cli import main\n"
        f"rc = main(['validate', '-f', {str(REPO / 'examples' / 'prunejob-local.yaml')!r}])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray', 'datasets') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_version() -> None:
    from interlace import __version__

    r = subprocess.run(
        [sys.executable, "-m", "interlace.cli", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == f"interlace {__version__}"


def test_hub_output_without_a_token_is_a_warning_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "INTERLACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "none"))
    doc = copy.deepcopy(BASE)
    doc["spec"]["output"] = {"uri": "hf://my-org/smollm2-pruned"}
    report = validate(doc)
    assert report.ok and [w.field for w in report.warnings] == ["spec.output.uri"]
    monkeypatch.setenv("HF_TOKEN", "hf_someToken123")
    assert validate(doc).warnings == []
    doc["spec"]["resources"]["pvcName"] = "work"
    assert validate(doc, cluster=True).ok  # the operator mounts the token Secret


def test_the_invalid_prunejob_corpus_when_present() -> None:
    """The spec-validation corpus (tests/fixtures/invalid_prunejobs.py, one bad field per case) where
    this checkout has it: every case rejected with its field named, cluster-only cases by --cluster,
    each well within 10 s."""
    corpus = pytest.importorskip("tests.fixtures.invalid_prunejobs")
    for case in corpus.CASES:
        t0 = time.monotonic()
        report = validate(case.doc(), cluster=case.cluster_only)
        assert time.monotonic() - t0 < 10, case.id
        assert not report.ok, case.id
        text = " ".join(f"{e.field} {e.message}" for e in report.errors)
        assert case.field in text, (case.id, case.field, text)


def test_the_embedded_default_scores_out_of_domain_and_in_domain() -> None:
    """examples/prunejob-local.yaml: finetunes on builtin:english, scores perplexity on held-out rows of it
    (in domain) and on builtin:python-docs (out of domain, the headline), which nothing trains on."""
    from interlace.schema.spec import parse_prunejob

    for name in ("prunejob-local.yaml", "sweep.yaml", "target.yaml", "auto.yaml"):
        spec = parse_prunejob(yaml.safe_load((REPO / "examples" / name).read_text())).spec
        ev = spec.evaluation
        assert "perplexity" in ev.benchmarks, name
        assert ev.out_of_domain_data is not None and ev.out_of_domain_data.path == "builtin:python-docs", name
        assert ev.data is not None and ev.data.path == "builtin:english-heldout", name
        trained = {spec.finetune.data.path, (spec.calibration.data or spec.finetune.data).path}
        assert trained == {"builtin:english"}, name


def test_builtin_vlm_and_easy_vqa_validate_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("easy_vqa")
    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path))
    doc = copy.deepcopy(BASE)
    doc["spec"]["model"]["source"] = "builtin:easyvqa-vl"
    doc["spec"]["calibration"]["data"]["path"] = "builtin:easy-vqa"
    doc["spec"]["finetune"]["data"]["path"] = "builtin:easy-vqa"
    doc["spec"]["evaluation"]["benchmarks"] = ["builtin:easy-vqa-test"]
    del doc["spec"]["evaluation"]["data"]
    del doc["spec"]["evaluation"]["outOfDomainData"]  # perplexity text; this job is scored by VQA
    report = validate(doc)
    assert report.ok, [str(e) for e in report.errors]
    assert report.num_layers == 12 and report.layers_to_drop == 2
    assert not (tmp_path / "models").exists()  # validate never trains the model
    doc["spec"]["model"]["source"] = "builtin:easyvqa-vl-huge"
    doc["spec"]["finetune"]["data"]["path"] = "builtin:easy-vqa-val"
    fields = {e.field: e.message for e in validate(doc).errors}
    assert "builtin:easyvqa-vl, builtin:easyvqa-vl-tiny" in fields["spec.model.source"]
    assert "builtin:easy-vqa, builtin:easy-vqa-test" in fields["spec.finetune.data.path"]
