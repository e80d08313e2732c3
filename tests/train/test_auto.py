"""Strategy auto (spec.pruning.strategy: auto): one analysis, a probe per candidate, the winner's full run."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

import interlace
from interlace.errors import InterlaceError
from interlace.pipeline.auto import choose
from interlace.schema.spec import LayerPlan, SpecError, Strategy, parse_prunejob
from tests.train.conftest import HAND_PLAN, tiny_text_prunejob

IL, S, C = Strategy.INTERLACE, Strategy.SHORTGPT, Strategy.CONSECUTIVE


# ------------------------------------------------------------------------------- the decision rule


def test_the_best_probe_wins() -> None:
    assert choose([(IL, 0.80), (S, 0.90), (C, 0.85)], 0.005)[0] == 1
    assert choose([(S, 0.85), (C, 0.90), (IL, 0.70)], 0.0)[0] == 1
    # equal retentions (no interlace among them): the first listed
    i, why = choose([(IL, 0.5), (C, 0.9), (S, 0.9)], 0.005)
    assert i == 1 and "equal to shortgpt's; the first listed of equals wins" in why
    # rows without a retention (no plan, a failed probe) do not compete
    i, why = choose([(IL, None), (S, 0.7), (C, None)], 0.005)
    assert i == 1 and "only candidate" in why
    with pytest.raises(InterlaceError, match="no candidate has a probe retention"):
        choose([(IL, None), (S, None)], 0.005)


def test_a_tie_within_the_margin_goes_to_interlace() -> None:
    # interlace 0.5 pp below the best: a tie at the default margin, wherever interlace is listed
    i, why = choose([(S, 0.905), (C, 0.80), (IL, 0.900)], 0.005)
    assert i == 2 and "a tie goes to interlace" in why and "shortgpt 90.5%" in why
    # just outside the margin: the best wins
    i, why = choose([(S, 0.906), (C, 0.80), (IL, 0.900)], 0.005)
    assert i == 0 and "best probe retention 90.6%" in why and "(interlace 90.0%)" in why
    # no margin: only an exact tie goes to interlace
    assert choose([(S, 0.9), (IL, 0.9)], 0.0)[0] == 1
    assert choose([(S, 0.9001), (IL, 0.9)], 0.0)[0] == 0
    # interlace best: it wins without a tie
    assert "best probe retention" in choose([(IL, 0.95), (S, 0.949)], 0.005)[1]


# ------------------------------------------------------------------------------------- the spec

BASE = {"spec": {"model": {"source": "m"}, "pruning": {"ratio": 0.25, "strategy": "auto"}}}


def _doc(**pruning: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"]["pruning"].update(pruning)
    return doc


def test_auto_defaults_and_refusals() -> None:
    p = parse_prunejob(BASE).spec.pruning
    assert p.strategy == Strategy.AUTO and p.candidates is None
    assert p.auto_candidates == [IL, S, C]
    assert (p.auto_probe.proxy_steps, p.auto_probe.tie_margin) == (10, 0.005)
    p = parse_prunejob(_doc(candidates=["tn", "random"], probe={"proxySteps": 3})).spec.pruning
    assert p.auto_candidates == [Strategy.TN, Strategy.RANDOM] and p.auto_probe.proxy_steps == 3

    refused = {
        "candidates without auto": (_doc(strategy="interlace", candidates=["interlace", "tn"]),
                                    r"spec.pruning.candidates: only read with spec.pruning.strategy: auto; set "
                                    r"strategy: auto or remove candidates"),
        "probe without auto": (_doc(strategy="shortgpt", probe={"proxySteps": 1}),
                               r"spec.pruning.probe: only read with spec.pruning.strategy: auto"),
        "one candidate": (_doc(candidates=["interlace"]), r"spec.pruning.candidates: .*at least 2"),
        "a duplicate": (_doc(candidates=["interlace", "tn", "interlace"]),
                        r"spec.pruning.candidates: lists interlace twice; list each once"),
        "auto among them": (_doc(candidates=["interlace", "auto"]),
                            r"spec.pruning.candidates: auto is what chooses among the candidates"),
        "unknown": (_doc(candidates=["interlace", "magic"]), r"spec.pruning.candidates\[1\]"),
        "a sweep": (_doc(ratio=None, ratios=[0.1, 0.2]), r"spec.pruning.strategy: auto chooses one plan and "
                                                         r"cannot run a sweep"),
        "a target": (_doc(ratio=None, target={"minRetention": 0.9}), r"spec.pruning.strategy: auto with "
                                                                     r"spec.pruning.target"),
        "bad margin": (_doc(probe={"tieMargin": 1.5}), r"spec.pruning.probe.tieMargin"),
    }
    for what, (doc, message) in refused.items():
        with pytest.raises(SpecError, match=message):
            parse_prunejob(doc)
        assert what
    no_eval = _doc()
    no_eval["spec"]["evaluation"] = {"enabled": False}
    with pytest.raises(SpecError, match=r"spec.pruning.strategy: auto needs spec.evaluation.enabled"):
        parse_prunejob(no_eval)


def test_auto_plans_nothing_itself() -> None:
    from interlace.stages.plan import select_layers

    with pytest.raises(InterlaceError, match="strategy auto picks among plans"):
        select_layers(None, n_drop=1, strategy="auto", num_layers=8)
    with pytest.raises(ValueError, match=r"plan\.strategy: auto"):
        LayerPlan.model_validate({**HAND_PLAN, "strategy": "auto"})
    with pytest.raises(InterlaceError, match="unknown strategy"):
        interlace.plan(Path("unused.json"), num_layers=1, strategy="auto")


# ------------------------------------------------------------------------------------ the runs


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_text_prunejob(tmp_path_factory.mktemp("auto"), "auto", {"numLayers": 2, "strategy": "auto", "probe": {"proxySteps": 0}})


def _run(job: dict[str, Any], out: Path) -> interlace.PruneResult:
    result = interlace.run(job, output=out, quiet=True)
    assert isinstance(result, interlace.PruneResult) and result.results is not None
    return result


def test_the_winner_is_the_best_probe(tiny_job: dict[str, Any], tmp_path: Path) -> None:
    from rich.console import Console

    from interlace.runtime.console import summary_table

    out = tmp_path / "out"
    result = _run(tiny_job, out)
    assert result.results is not None
    auto = result.results.auto
    assert auto is not None and [c.strategy for c in auto.candidates] == [IL, S, C]
    rows = auto.candidates
    assert all(c.state == "Probed" and c.retention is not None and c.layers_dropped == 2 for c in rows)
    # each row's retention is its own probe's (the probe's results.json, in its own directory)
    for c in rows:
        probe = json.loads((out / "probes" / str(c.strategy) / "results.json").read_text())
        assert c.retention == pytest.approx(probe["relativePerformance"] / 100)
        assert json.loads((out / "probes" / str(c.strategy) / "plan.json").read_text())["drop"] == c.drop
    # the winner, from the table's own numbers: the best retention (the first listed among equals),
    # unless interlace is within the tie margin of it
    rets = [c.retention for c in rows if c.retention is not None]
    best = max(rets)
    interlace_ret = rows[0].retention
    assert interlace_ret is not None
    expected = IL if interlace_ret >= best - auto.tie_margin else next(c.strategy for c in rows if c.retention == best)
    assert auto.winner == expected and [c.chosen for c in rows] == [c.strategy == expected for c in rows]
    won = next(c for c in rows if c.chosen)
    assert won.reason and auto.reason and auto.reason.startswith(f"{expected}: ")
    # the full run is the winner's plan, published at the output, with one analysis for everything
    plan = json.loads((out / "plan.json").read_text())
    assert plan["drop"] == won.drop and plan["strategy"] == str(expected) == str(result.plan.strategy)
    assert json.loads((out / "model" / "config.json").read_text())["num_hidden_layers"] == 6
    assert [p for p in out.rglob("scores.json") if not p.is_symlink()] == [out / "analysis" / "scores.json"]
    assert auto.final_retention == pytest.approx(won.retention)  # proxySteps 0 and no finetune: same model
    # status: the table as the probes end, and the summary line
    final = json.loads((out / "results.json").read_text())
    assert final["auto"]["winner"] == str(expected) and final["summary"].startswith("auto: interlace ")
    assert f"{expected} {won.retention:.1%} (chosen)" in final["summary"]
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    probed = [
        sum(c["state"] == "Probed" for c in e["data"]["auto"]["candidates"])
        for e in events if e["event"] == "results" and "auto" in e["data"]
    ]
    assert {0, 1, 2, 3} <= set(probed)
    # the printed summary: a row per candidate and the verdict
    buf = io.StringIO()
    Console(file=buf, width=200).print(summary_table(result.results, output_dir=out))
    text = buf.getvalue()
    for c in rows:
        assert f"probe: {c.strategy}" in text and f"{c.retention:.1%}" in text
    assert "strategy auto" in text and "chosen: " in text

    # a tie margin wide enough to reach interlace's probe hands it the win (this tiny random model's
    # interlace probe is well below the others', so the default margin does not)
    assert expected != IL
    wide = copy.deepcopy(tiny_job)
    wide["spec"]["pruning"]["probe"]["tieMargin"] = round(best - interlace_ret + 0.01, 4)
    again = _run(wide, tmp_path / "wide")
    assert again.results is not None and again.results.auto is not None
    assert again.results.auto.winner == IL and "a tie goes to interlace" in (again.results.auto.reason or "")
    assert json.loads((tmp_path / "wide" / "plan.json").read_text())["drop"] == rows[0].drop


def test_a_dry_run_gives_the_plans_only(tiny_job: dict[str, Any], tmp_path: Path) -> None:
    job = copy.deepcopy(tiny_job)
    job["spec"]["dryRun"] = True
    job["spec"]["pruning"]["numLayers"] = 3  # INTERLACE's windows fit only 2 drops in 8 layers
    out = tmp_path / "dry"
    result = _run(job, out)
    assert result.results is not None and result.results.auto is not None
    rows = result.results.auto.candidates
    assert [(c.strategy, c.state) for c in rows] == [(IL, "CannotPlan"), (S, "Planned"), (C, "Planned")]
    assert "can fit only 2 of the 3" in (rows[0].reason or "") and rows[0].drop == []
    assert all(len(c.drop) == 3 and c.retention is None and not c.chosen for c in rows[1:])
    assert result.results.auto.winner is None and "no probe ran" in (result.results.auto.reason or "")
    assert not (out / "model").exists() and not list((out / "probes").rglob("model"))
    assert result.plan.drop == rows[1].drop and str(result.plan.strategy) == "shortgpt"
    assert result.results.summary == "auto: interlace CannotPlan, shortgpt Planned, consecutive Planned"
