"""bench/quality.py's seed aggregation: mean and spread of retention over seeds, per strategy and arm."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_mean_spread_by_hand() -> None:
    q = _bench()
    s = q.mean_spread([90.0, 100.0, 110.0])
    assert (s.mean, s.sd, s.min, s.max, s.n) == (100.0, 10.0, 90.0, 110.0, 3)  # sample sd: sqrt(200 / 2)
    s = q.mean_spread([1.0, 2.0, 4.0, 7.0])
    assert s.mean == pytest.approx(3.5) and s.sd == pytest.approx(statistics.stdev([1, 2, 4, 7]))
    assert s.sd == pytest.approx(((2.5**2 + 1.5**2 + 0.5**2 + 3.5**2) / 3) ** 0.5)
    one = q.mean_spread([42.0])
    assert (one.mean, one.sd, one.n) == (42.0, 0.0, 1) and str(one) == "42.0"
    assert str(q.mean_spread([90.0, 100.0, 110.0])) == "100.0 ± 10.0 [90.0, 110.0]"
    with pytest.raises(ValueError, match="no values"):
        q.mean_spread([])
    with pytest.raises(ValueError, match="non-finite"):
        q.mean_spread([1.0, float("nan")])


def _row(strategy: str, arm: str, seed: int, ood: float, ind: float, drop: list[int]) -> dict:
    return {
        "strategy": strategy, "arm": arm, "seed": seed, "drop": drop, "steps": 30,
        "retention_ood_pruned": ood / 2, "retention_ood_finetuned": ood,
        "retention_in_pruned": ind / 2, "retention_in_finetuned": ind,
    }


def test_aggregate_groups_by_strategy_and_arm_over_seeds() -> None:
    q = _bench()
    rows = [
        _row("interlace", "next-token", 0, 80.0, 120.0, [4, 10]),
        _row("random", "next-token", 0, 1.0, 2.0, [1, 8]),
        _row("interlace", "next-token", 1, 84.0, 118.0, [4, 10]),
        _row("random", "next-token", 1, 3.0, 2.0, [3, 9]),
        _row("interlace", "distillation", 0, 90.0, 110.0, [4, 10]),
        _row("interlace", "next-token", 2, 88.0, 122.0, [4, 10]),
    ]
    agg = {(a["strategy"], a["arm"]): a for a in q.aggregate(rows)}
    assert list(agg) == [("interlace", "next-token"), ("random", "next-token"), ("interlace", "distillation")]
    it = agg[("interlace", "next-token")]
    assert it["seeds"] == [0, 1, 2] and it["drops"] == [(4, 10)]
    assert it["ood_finetuned"].mean == pytest.approx(84.0) and it["ood_finetuned"].sd == pytest.approx(4.0)
    assert it["ood_pruned"].mean == pytest.approx(42.0) and it["ood_pruned"].sd == pytest.approx(2.0)
    assert it["in_finetuned"].mean == pytest.approx(120.0) and it["in_finetuned"].sd == pytest.approx(2.0)
    assert (it["in_finetuned"].min, it["in_finetuned"].max) == (118.0, 122.0)
    rnd = agg[("random", "next-token")]
    assert rnd["drops"] == [(1, 8), (3, 9)]  # the plan seed moves the random plan
    assert rnd["ood_finetuned"].mean == pytest.approx(2.0) and rnd["in_finetuned"].sd == 0.0
    assert agg[("interlace", "distillation")]["ood_finetuned"].n == 1
    table = q.table(q.aggregate(rows))
    assert "| interlace | next-token | 30 | 3 | 42.0 ± 2.0 [40.0, 44.0] | **84.0 ± 4.0 [80.0, 88.0]** |" in table
    assert agg[("interlace", "next-token")]["steps"] == [30]


def test_arms_are_finetune_spec_overrides() -> None:
    """An arm is FinetuneSpec fields merged over the common spec: every registered arm must validate."""
    from interlace.schema.spec import FinetuneSpec

    q = _bench()
    assert "next-token" in q.ARMS
    for arm in q.ARMS.values():
        FinetuneSpec.model_validate({**FinetuneSpec().to_wire(), **arm.finetune})


def test_seconds_per_step_reads_the_loops_eta() -> None:
    """eta = per_step x (total - step): the last progress before the end gives the loop's mean step time."""
    q = _bench()
    progress = [
        {"step": 1, "totalSteps": 4, "etaSeconds": 3 * 2.0},
        {"step": 2, "totalSteps": 4, "etaSeconds": 2 * 2.5},
        {"step": 3, "totalSteps": 4, "etaSeconds": 1 * 3.0},
        {"step": 4, "totalSteps": 4, "etaSeconds": 0.0},  # the end: no step time left in it
    ]
    assert q.seconds_per_step(progress) == pytest.approx(3.0)
    assert q.seconds_per_step(list(reversed(progress))) == pytest.approx(3.0)  # order of arrival does not matter
    assert q.seconds_per_step(progress[:2]) == pytest.approx(2.5)
    assert q.seconds_per_step([{"step": 1, "totalSteps": 1, "etaSeconds": 0.0}]) is None  # one step: nothing to read
    assert q.seconds_per_step([{"step": 1, "totalSteps": 3}]) is None  # no eta sent


def test_equal_time_steps() -> None:
    q = _bench()
    assert q.equal_time_steps(12, 1.0, 1.5) == 8  # 1.5x the cost per step: 2/3 of the steps
    assert q.equal_time_steps(10, 2.0, 2.0) == 10
    assert q.equal_time_steps(4, 1.0, 1.47) == 3
    assert q.equal_time_steps(2, 1.0, 10.0) == 1  # never zero steps
    assert q.equal_time_steps(6, 2.0, 1.0) == 12  # a cheaper arm gets more
    with pytest.raises(ValueError, match="> 0"):
        q.equal_time_steps(4, 0.0, 1.0)
