"""The speed report's shape, and `evaluate` end to end on tiny models (through the real surgery)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlace.errors import InterlaceError
from interlace.runtime.progress import JsonlReporter
from interlace.schema.spec import DataSpec, EvaluationSpec
from interlace.stages.evaluate import evaluate
from interlace.stages.evaluate.speed import measure_speed
from interlace.stages.evaluate.vqa import load_vqa, score_vqa
from tests.evaluation.helpers import base_and_pruned


def test_speed_report_shape() -> None:
    base, pruned, tok, _ = base_and_pruned("llama")
    qs = ["What is in the picture?", "Count the red squares, please."]
    rep = measure_speed(base, pruned, tok, qs, new_tokens=4, repeats=2, warmup=1)
    assert rep.prompts == 2 and rep.new_tokens == 4 and rep.repeats == 2
    for v in (rep.prefill_seconds_base, rep.prefill_seconds_pruned, rep.decode_tokens_per_second_base,
              rep.decode_tokens_per_second_pruned, rep.prefill_speedup, rep.decode_speedup):
        assert v > 0 and v == v  # positive, not NaN
    assert rep.prefill_speedup == pytest.approx(rep.prefill_seconds_base / rep.prefill_seconds_pruned)
    with pytest.raises(InterlaceError, match="at least 2"):
        measure_speed(base, pruned, tok, qs, new_tokens=1)
    with pytest.raises(InterlaceError, match="no prompts"):
        measure_speed(base, pruned, tok, [])


def _vqa_set(path: Path) -> Path:
    rows = [
        {"question": "Which shape is red?", "choices": ["circle", "square", "triangle"], "answer": "A"},
        {"question": "How many squares?", "choices": ["one", "two"], "answer": 1},
        {"question": "What colour is the circle?", "answer": "red"},
        {"question": "Is there a square?", "answer": ["yes", "yeah"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _text_data(path: Path) -> DataSpec:
    lines = [
        {"text": "The red circle sits next to a blue square on a white table."},
        {"text": "Three small triangles are drawn in the corner of the picture."},
        {"text": "A chart shows sales rising over four quarters of the year."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return DataSpec(format="text", path=str(path), fraction=1.0)


def test_evaluate_end_to_end(tmp_path: Path) -> None:
    base, pruned, tok, _ = base_and_pruned("llama", drop=(2, 5))
    vqa = _vqa_set(tmp_path / "shapes.jsonl")
    spec = EvaluationSpec(
        benchmarks=["perplexity", str(vqa)],
        data=_text_data(tmp_path / "heldout.jsonl"),
        max_samples=8,
        batch_size=2,
        max_new_tokens=3,
        speed=True,
    )
    reporter = JsonlReporter(tmp_path / "progress.jsonl")
    res = evaluate(spec, base=base, pruned=pruned, processor=tok, reporter=reporter, speed_repeats=1)
    reporter.close()

    names = [b.name for b in res.benchmarks]
    assert names == ["perplexity", "shapes"]
    ppl, acc = res.benchmarks
    assert ppl.metric == "perplexity" and ppl.base > 1 and ppl.pruned > 1
    assert ppl.relative == pytest.approx(100 * ppl.base / ppl.pruned)
    # The VQA numbers are exactly what the built-in evaluator gives each model on its own.
    items = load_vqa(vqa)
    assert acc.base == score_vqa(base, tok, items, batch_size=1, max_new_tokens=3).accuracy
    assert acc.pruned == score_vqa(pruned, tok, items, batch_size=1, max_new_tokens=3).accuracy
    defined = [b.relative for b in res.benchmarks if b.relative is not None]
    assert res.relative_performance == pytest.approx(sum(defined) / len(defined))
    assert res.layers_before == 8 and res.layers_after == 6
    assert res.params_after < res.params_before
    assert res.prefill_speedup is not None and res.prefill_speedup > 0
    assert res.decode_speedup is not None and res.decode_speedup > 0
    events = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["data"]["percent"] == 100.0


def test_bad_benchmarks_fail_before_any_model_work(tmp_path: Path) -> None:
    base, pruned, tok, _ = base_and_pruned("llama")
    cases = [
        (["nope.jsonl"], r"benchmarks\[0\].*no such VQA file"),
        (["lmms-eval:mmbench"], r"benchmarks\[0\].*lmms-eval.*not installed"),
        (["perplexity"], "spec.evaluation.data"),
    ]
    for benchmarks, needle in cases:
        with pytest.raises(InterlaceError, match=needle):
            evaluate(EvaluationSpec(benchmarks=benchmarks), base=base, pruned=pruned, processor=tok)


def _other_text(path: Path) -> DataSpec:
    lines = [
        {"text": "Return a list of the words in the string, using sep as the delimiter string."},
        {"text": "Open file and return a stream. Raise OSError upon failure of the operation."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return DataSpec(format="text", path=str(path), fraction=1.0)


def test_out_of_domain_perplexity_is_the_headline_and_in_domain_is_beside_it(tmp_path: Path) -> None:
    from interlace.stages.evaluate import perplexity, perplexity_sets

    base, pruned, tok, _ = base_and_pruned("llama", drop=(2, 5))
    spec = EvaluationSpec(
        benchmarks=["perplexity"],
        data=_text_data(tmp_path / "heldout.jsonl"),
        out_of_domain_data=_other_text(tmp_path / "docs.jsonl"),
        max_samples=8,
        batch_size=2,
        speed=False,
    )
    res = evaluate(spec, base=base, pruned=pruned, processor=tok)
    assert [(b.name, b.domain) for b in res.benchmarks] == [
        ("perplexity (out of domain)", "out"),
        ("perplexity (in domain)", "in"),
    ]
    out, ind = res.benchmarks
    # each is the perplexity of its own samples (not the same number twice)
    (_, _, out_samples), (_, _, in_samples) = perplexity_sets(spec)
    assert out.base == pytest.approx(perplexity(base, tok, out_samples, batch_size=2))
    assert ind.pruned == pytest.approx(perplexity(pruned, tok, in_samples, batch_size=2))
    assert out.base != pytest.approx(ind.base)
    # the headline is the out-of-domain retention alone; the in-domain one is reported beside it
    assert res.relative_performance == pytest.approx(out.relative)
    assert res.retention_out_of_domain == pytest.approx(100 * out.base / out.pruned)
    assert res.retention_in_domain == pytest.approx(100 * ind.base / ind.pruned)
    assert res.retention_line() == (
        f"retention (out of domain) {res.retention_out_of_domain:.1f}%, in domain {res.retention_in_domain:.1f}%"
    )
    # without outOfDomainData: one unlabelled perplexity, as before, and no retention line
    plain = evaluate(spec.model_copy(update={"out_of_domain_data": None}), base=base, pruned=pruned, processor=tok)
    assert [(b.name, b.domain) for b in plain.benchmarks] == [("perplexity", None)]
    assert plain.benchmarks[0].base == pytest.approx(ind.base)
    assert plain.retention_out_of_domain is None and plain.retention_line() is None


def test_headline_leaves_out_in_domain_only_when_out_of_domain_is_there() -> None:
    from interlace.schema.spec import BenchmarkResult
    from interlace.stages.evaluate import headline, retention_fields

    out = BenchmarkResult(name="perplexity (out of domain)", base=10, pruned=20, relative=50.0, metric="perplexity", domain="out")
    ind = BenchmarkResult(name="perplexity (in domain)", base=10, pruned=8, relative=125.0, metric="perplexity", domain="in")
    vqa = BenchmarkResult(name="shapes", base=0.5, pruned=0.4, relative=80.0)
    assert headline([out, ind]) == pytest.approx(50.0)
    assert headline([out, ind, vqa]) == pytest.approx(65.0)
    assert headline([ind, vqa]) == pytest.approx(102.5)  # no out-of-domain figure: nothing is left out
    assert retention_fields([out, ind, vqa]) == {"retention_out_of_domain": 50.0, "retention_in_domain": 125.0}


def test_out_of_domain_data_needs_the_perplexity_benchmark(tmp_path: Path) -> None:
    from interlace.stages.evaluate import check_benchmarks

    vqa = _vqa_set(tmp_path / "shapes.jsonl")
    spec = EvaluationSpec(benchmarks=[str(vqa)], out_of_domain_data=_other_text(tmp_path / "docs.jsonl"))
    with pytest.raises(InterlaceError, match="outOfDomainData is scored by the perplexity benchmark"):
        check_benchmarks(spec)
    # out-of-domain text alone is enough for perplexity (no in-domain set then)
    check_benchmarks(spec.model_copy(update={"benchmarks": ["perplexity"]}))
