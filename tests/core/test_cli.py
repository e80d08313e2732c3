"""`interlace analyze / plan / prune`: contracts, exit codes, nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interlace.cli import main
from tests.fixtures.finevision import write_finevision_shards
from tests.fixtures.tiny import save_tiny

REPO = Path(__file__).resolve().parents[2]


def _scores_doc(L: int = 8) -> dict:
    return {
        "num_layers": L,
        "scores": {
            "1": [0.1 * (i % 5) + 0.3 for i in range(L - 1)],
            "2": [0.05 * (i % 3) + 0.2 for i in range(L - 2)],
            "3": [0.9 - 0.07 * i for i in range(L - 3)],
        },
    }


def _write(path: Path, doc: dict | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ------------------------------------------------------------------------------------------ plan


def test_plan_strategy_choices_are_the_spec_enum() -> None:
    """`interlace plan --strategy` lists its choices without importing pydantic; they must stay the enum's
    planning strategies."""
    from interlace.cli.plan import STRATEGIES
    from interlace.schema.spec import PLANNING_STRATEGIES

    assert tuple(s.value for s in PLANNING_STRATEGIES) == STRATEGIES  # auto is a job's choice, not a plan's


def test_plan_ok(tmp_path: Path) -> None:
    s = _write(tmp_path / "scores.json", _scores_doc())
    out = tmp_path / "plan.json"
    assert (
        main(["plan", "--scores", str(s), "--ratio", "0.25", "--strategy", "interlace", "--output", str(out)])
        == 0
    )
    plan = json.loads(out.read_text())
    assert plan["numLayers"] == 8 and plan["strategy"] == "interlace" and plan["ratio"] == 0.25
    assert plan["drop"] == [1, 4] and plan["finetune"] == [0, 3] and plan["anchor"] == [2, 5]
    assert sorted(plan["drop"] + plan["finetune"] + plan["anchor"] + plan["frozen"]) == list(range(8))
    out2 = tmp_path / "p2.json"
    args = [
        "plan",
        "--scores",
        str(s),
        "--ratio",
        "0.25",
        "--strategy",
        "interlace",
        "--protect",
        "0,1",
        "--output",
        str(out2),
    ]
    assert main(args) == 0
    assert not {0, 1} & set(json.loads(out2.read_text())["drop"])


def test_plan_uses_deepstack_layers_from_scores(tmp_path: Path) -> None:
    doc = _scores_doc() | {"meta": {"deepstack_layers": [0, 1, 2]}}
    s = _write(tmp_path / "scores.json", doc)
    out = tmp_path / "plan.json"
    args = ["plan", "--scores", str(s), "--ratio", "0.25", "--strategy", "interlace"]
    assert main([*args, "--output", str(out)]) == 0
    assert not {0, 1, 2} & set(json.loads(out.read_text())["drop"])
    assert main([*args, "--deepstack-policy", "position", "--output", str(out)]) == 0
    assert 1 in json.loads(out.read_text())["drop"]


@pytest.mark.parametrize(
    ("scores", "extra", "match"),
    [
        (_scores_doc(), ["--ratio", "0"], "ratio must be in (0, 1)"),
        (_scores_doc(), ["--ratio", "-0.5"], "ratio must be in (0, 1)"),
        (_scores_doc(), ["--ratio", "0.05"], "drops no layer"),
        (_scores_doc(), ["--ratio", "0.9"], "too large"),
        (_scores_doc(), ["--ratio", "0.5"], "can fit only"),
        (_scores_doc(), ["--ratio", "0.25", "--protect", "0,x"], "--protect"),
        (_scores_doc(), ["--ratio", "0.25", "--protect", "8"], "outside 0..7"),
        (_scores_doc() | {"scores": {"1": [0.5] * 6}}, ["--ratio", "0.25"], "has 6 entries, expected"),
        (
            '{"num_layers": 8, "scores": {"1": [0.5, NaN, 0.5, 0.5, 0.5, 0.5, 0.5]}}',
            ["--ratio", "0.25", "--strategy", "shortgpt"],
            "NaN",
        ),
        ("{not json", ["--ratio", "0.25"], "not valid JSON"),
    ],
)
def test_plan_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], scores, extra, match) -> None:
    s = _write(tmp_path / "scores.json", scores)
    out = tmp_path / "plan.json"
    args = ["plan", "--scores", str(s), "--output", str(out), *extra]
    if "--strategy" not in extra:
        args += ["--strategy", "interlace"]
    assert main(args) == 2
    line = _err_line(capsys)
    assert line.startswith("interlace plan: error:") and match in line, line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_plan_missing_scores_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "plan",
                "--scores",
                str(tmp_path / "x.json"),
                "--ratio",
                "0.2",
                "--output",
                str(tmp_path / "p.json"),
            ]
        )
        == 2
    )
    assert "no such scores file" in _err_line(capsys)


def test_plan_subprocess_does_not_import_torch(tmp_path: Path) -> None:
    s = _write(tmp_path / "scores.json", _scores_doc())
    out = tmp_path / "plan.json"
    code = (
        "import sys\nfrom interlace.cli import main\n"
        f"rc = main(['plan', '--scores', {str(s)!r}, '--ratio', '0.25', '--strategy', 'tn', '--output', {str(out)!r}])\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\nsys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    assert json.loads(out.read_text())["strategy"] == "tn"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlace.cli",
            "plan",
            "--scores",
            str(s),
            "--ratio",
            "1.5",
            "--output",
            str(tmp_path / "q.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "ratio" in r.stderr
    assert not (tmp_path / "q.json").exists()


# --------------------------------------------------------------------------- analyze + prune


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fv")
    write_finevision_shards(root, {"charts": 6, "photos": 6}, seed=1)
    return root


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("qwen3_vl", tmp_path_factory.mktemp("m") / "qwen3_vl")


def test_analyze_plan_prune_end_to_end(tmp_path: Path, data_dir: Path, vlm_dir: Path) -> None:
    scores, heat, plan, out = (
        tmp_path / "scores.json",
        tmp_path / "scores.png",
        tmp_path / "plan.json",
        tmp_path / "pruned",
    )
    args = [
        "analyze",
        "--model",
        str(vlm_dir),
        "--data",
        str(data_dir),
        "--samples",
        "5",
        "--batch-size",
        "2",
    ]
    assert main([*args, "--output", str(scores), "--heatmap", str(heat)]) == 0
    doc = json.loads(scores.read_text())
    assert doc["num_layers"] == 8 and [len(doc["scores"][k]) for k in "123"] == [7, 6, 5]
    assert (
        doc["meta"]["num_samples"] == 5
        and doc["meta"]["num_tokens"] > 0
        and doc["meta"]["deepstack_layers"] == [0, 1, 2]
    )
    assert heat.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        main(
            [
                "plan",
                "--scores",
                str(scores),
                "--ratio",
                "0.25",
                "--strategy",
                "interlace",
                "--output",
                str(plan),
            ]
        )
        == 0
    )
    p = json.loads(plan.read_text())
    assert len(p["drop"]) == 2 and not {0, 1, 2} & set(p["drop"])
    assert main(["prune", "--model", str(vlm_dir), "--plan", str(plan), "--output", str(out)]) == 0

    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(out)
    assert cfg.text_config.num_hidden_layers == 6
    assert cfg.interlace_kept_layers == [i for i in range(8) if i not in p["drop"]]
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()


def test_prune_cli_subprocess(tmp_path: Path) -> None:
    model = save_tiny("llama", tmp_path / "llama")
    plan = _write(
        tmp_path / "plan.json",
        {
            "num_layers": 8,
            "strategy": "shortgpt",
            "drop": [2, 3],
            "finetune": [4],
            "anchor": [],
            "frozen": [0, 1, 5, 6, 7],
        },
    )
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlace.cli",
            "prune",
            "--model",
            str(model),
            "--plan",
            str(plan),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6


def _plan_doc(**kw) -> dict:
    base = {
        "num_layers": 8,
        "strategy": "shortgpt",
        "drop": [3],
        "finetune": [4],
        "anchor": [],
        "frozen": [0, 1, 2, 5, 6, 7],
    }
    return base | kw


@pytest.mark.parametrize(
    ("plan", "model", "match"),
    [
        (_plan_doc(drop=[3, 9]), "ok", "outside 0..7"),
        (_plan_doc(drop=[3, 4], finetune=[4]), "ok", "both"),
        (_plan_doc(frozen=[0, 1, 2, 5, 6]), "ok", "does not place layers [7]"),
        (_plan_doc(drop=[4, 3]), "ok", "must be sorted"),
        (_plan_doc(num_layers=10, frozen=[0, 1, 2, 5, 6, 7, 8, 9]), "ok", "10-layer"),
        (_plan_doc(), "missing", "does not exist"),
        (_plan_doc(), "gpt2", "unsupported architecture GPT2LMHeadModel"),
        ("[1, 2", "ok", "not valid JSON"),
    ],
)
def test_prune_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plan, model, match, llama_dir: Path
) -> None:
    from tests.core.test_models import _tiny_gpt2

    p = _write(tmp_path / "plan.json", plan)
    m = {"ok": llama_dir, "missing": tmp_path / "nope", "gpt2": None}[model]
    if model == "gpt2":
        m = _tiny_gpt2(tmp_path / "gpt2")
    out = tmp_path / "out"
    assert main(["prune", "--model", str(m), "--plan", str(p), "--output", str(out)]) == 2
    line = _err_line(capsys)
    assert line.startswith("interlace prune: error:") and match in line, line
    assert not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("m") / "llama")


def test_prune_refuses_non_empty_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], llama_dir: Path
) -> None:
    p = _write(tmp_path / "plan.json", _plan_doc())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["prune", "--model", str(llama_dir), "--plan", str(p), "--output", str(out)]) == 2
    assert "not empty" in _err_line(capsys) and sorted(x.name for x in out.iterdir()) == ["keep"]


def test_prune_deepstack_protect_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], vlm_dir: Path
) -> None:
    p = _write(tmp_path / "plan.json", _plan_doc(drop=[1], finetune=[2], frozen=[0, 3, 4, 5, 6, 7]))
    out = tmp_path / "out"
    assert main(["prune", "--model", str(vlm_dir), "--plan", str(p), "--output", str(out)]) == 2
    assert "DeepStack" in _err_line(capsys) and not out.exists()
    args = [
        "prune",
        "--model",
        str(vlm_dir),
        "--plan",
        str(p),
        "--output",
        str(out),
        "--deepstack-policy",
        "position",
    ]
    assert main(args) == 0 and (out / "config.json").is_file()


def test_analyze_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir: Path, llama_dir: Path
) -> None:
    out = tmp_path / "s.json"
    cases = [
        (["--model", str(tmp_path / "nope"), "--data", str(data_dir)], "does not exist"),
        (["--model", str(llama_dir), "--data", str(tmp_path / "nodata")], "--data"),
        (["--model", str(llama_dir), "--data", str(data_dir), "--samples", "0"], "--samples"),
        (["--model", str(llama_dir), "--data", str(data_dir), "--batch-size", "0"], "--batch-size"),
    ]
    for args, match in cases:
        assert main(["analyze", *args, "--output", str(out)]) == 2
        line = _err_line(capsys)
        assert line.startswith("interlace analyze: error:") and match in line, line
        assert not out.exists()


@pytest.mark.parametrize("kind", ["llama", "qwen3_vl"])
def test_prune_checkpoint_without_processor_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A training checkpoint (weights and config only) is pruned and saved; the command says the
    processor/tokenizer was not found and not copied, without a raw transformers/hub message."""
    model = save_tiny(kind, tmp_path / kind)
    for f in model.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            f.unlink()
    plan = _write(tmp_path / "plan.json", _plan_doc(drop=[5], finetune=[6], frozen=[0, 1, 2, 3, 4, 7]))
    out = tmp_path / "out"
    assert main(["prune", "--model", str(model), "--plan", str(plan), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "not found" in err and "not copied" in err, err
    assert "huggingface.co" not in err and "Traceback" not in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("num_hidden_layers", cfg.get("text_config", {}).get("num_hidden_layers")) == 7
    assert (out / "model.safetensors").is_file() and (out / "interlace_plan.json").is_file()
    assert not [f.name for f in out.iterdir() if f.name.startswith(("tokenizer", "processor", "preprocessor"))]


def test_a_transient_failure_exits_75_and_refused_input_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator retries exit 75 (TransientError: the network, the Hub) and not exit 2 (InterlaceError)."""
    import interlace.cli.validate as validate
    from interlace.errors import InterlaceError, TransientError

    for err, code in ((TransientError("the hub answered 503"), 75), (InterlaceError("spec.model.source: no"), 2)):
        def fail(_args: object, err: Exception = err) -> int:
            raise err

        monkeypatch.setattr(validate, "run", fail)
        assert main(["validate", "-f", "x.yaml"]) == code


def test_hub_errors_say_whether_a_retry_can_help(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    import interlace.models.load as load
    from interlace.errors import TransientError
    from interlace.models.load import _hub_error

    monkeypatch.setattr(load, "_offline", lambda: False)

    missing = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    gated = GatedRepoError.__new__(GatedRepoError)
    for err in (missing, gated):
        out = _hub_error("acme/nope", err)
        assert not isinstance(out, TransientError) and "spec.model" in str(out)
    assert isinstance(_hub_error("acme/nope", ConnectionError("reset by peer")), TransientError)
