"""The invalid-PruneJob corpus against the CLI: `interlace run -f` exits 2 naming the field, before
anything runs; cluster-only cases are refused by the cluster rules (what the operator applies).

The API server side of the same corpus is tests/operator/test_invalid_corpus_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from interlace.cli import main
from interlace.schema.spec import SpecError, parse_prunejob
from tests.fixtures.invalid_prunejobs import CASES, Bad, maximal_doc, valid_doc


class _Ran(Exception):
    """Raised if a case got past validation (the pipeline must not start)."""


@pytest.fixture
def no_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    import interlace.pipeline.run

    def refuse(*_a: object, **_k: object) -> None:
        raise _Ran

    monkeypatch.setattr(interlace.pipeline.run, "resolve_output_dir", refuse)


def test_the_corpus_is_large_and_covers_every_spec_field() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    from interlace.schema import spec as S

    covered = {c.field for c in CASES} | {c.path for c in CASES}
    models = {
        "spec.model": S.ModelSpec, "spec.pruning": S.PruningSpec, "spec.calibration": S.CalibrationSpec,
        "spec.finetune": S.FinetuneSpec, "spec.finetune.data": S.DataSpec, "spec.evaluation": S.EvaluationSpec,
        "spec.output": S.OutputSpec, "spec.resources": S.ResourcesSpec, "spec": S.PruneJobSpec,
    }
    missing = []
    for prefix, model in models.items():
        for name, info in model.model_fields.items():
            path = f"{prefix}.{info.alias or name}"
            if path in models:
                continue
            if not any(c == path or c.startswith(path + ".") or c.startswith(path + "[") for c in covered):
                missing.append(path)
    # Fields with nothing invalid to say: bools/enums are covered, these are the rest.
    assert missing == [], missing


def test_valid_and_maximal_documents_pass() -> None:
    parse_prunejob(valid_doc(), cluster=True)
    parse_prunejob(maximal_doc("maximal"), cluster=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cli_rejects_with_exit_2_naming_the_field(
    case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_pipeline: None
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(case.doc()))
    if case.cluster_only:
        # a local run may write to a directory; a PruneJob in a cluster may not
        with pytest.raises(_Ran):
            main(["run", "-f", str(path)])
        with pytest.raises(SpecError) as err:
            parse_prunejob(case.doc(), cluster=True)
        assert case.field in str(err.value), str(err.value)
        return
    assert main(["run", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert case.field in err, err
