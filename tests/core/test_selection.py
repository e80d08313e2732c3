"""Layer selection rules (method section 2) and baselines, with property-based tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from interlace.errors import InterlaceError
from interlace.schema.limits import max_drop
from interlace.schema.spec import LayerPlan, PruningSpec
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.plan import load_plan, n_drop_for_ratio, protected_layers, save_plan, select_layers


def _scores(
    L: int, s1: list[float], s2: list[float] | None = None, s3: list[float] | None = None
) -> LayerScores:
    s2 = s2 if s2 is not None else [0.0] * (L - 2)
    s3 = s3 if s3 is not None else [0.0] * (L - 3)
    return LayerScores(num_layers=L, scores={1: s1, 2: s2, 3: s3})


# ----------------------------------------------------------------------------------- examples


def test_paper_layer_counts_for_36_layers() -> None:
    assert [n_drop_for_ratio(36, r) for r in (0.10, 0.15, 0.20, 0.25)] == [3, 5, 7, 9]


@pytest.mark.parametrize("L", [4, 8, 36])
def test_drop_limit_is_one_fact(L: int) -> None:
    """The spec, the ratio rule, the plan API and the selection all accept L-2 and refuse L-1."""
    import interlace.api

    assert max_drop(L) == L - 2
    sc = LayerScores(num_layers=L, scores={1: [float(i) for i in range(L - 1)]})
    # the most: accepted everywhere
    assert PruningSpec(num_layers=L - 2).layers_to_drop(L) == L - 2
    assert len(select_layers(sc, n_drop=L - 2, strategy="shortgpt").drop) == L - 2
    assert len(interlace.api.plan(sc, num_layers=L - 2, strategy="shortgpt").drop) == L - 2
    assert n_drop_for_ratio(L, (L - 2) / L) == L - 2
    # one more: refused everywhere, each naming the same limit
    with pytest.raises(ValueError, match=f"at most {L - 2} can go"):
        PruningSpec(num_layers=L - 1).layers_to_drop(L)
    with pytest.raises(InterlaceError, match=f"at most {L - 2} can go"):
        select_layers(sc, n_drop=L - 1, strategy="shortgpt")
    with pytest.raises(InterlaceError, match=f"1..{L - 2} for {L} layers"):
        interlace.api.plan(sc, num_layers=L - 1, strategy="shortgpt")
    with pytest.raises(InterlaceError, match=f"at most {L - 2} can go"):
        n_drop_for_ratio(L, (L - 1) / L)


def test_interlace_worked_example() -> None:
    L = 10
    s1 = [0.1, 0.2, 0.9, 0.8, 0.3, 0.4, 0.7, 0.7, 0.5]
    s3 = [0.1, 0.2, 0.95, 0.3, 0.4, 0.9, 0.2]  # windows (2,3,4) then (5,6,7)
    s2 = [0.0] * 8
    plan = select_layers(_scores(L, s1, s2, s3), n_drop=2, strategy="interlace")
    # (2,3,4): s1[2]=0.9 > s1[3]=0.8 -> drop 2, tune 3, anchor 4
    # (5,6,7): s1[5]=0.4 < s1[6]=0.7 -> drop 6, tune 5, anchor 7
    assert plan.windows == [[2, 3, 4], [5, 6, 7]]
    assert (plan.drop, plan.finetune, plan.anchor) == ([2, 6], [3, 5], [4, 7])
    assert plan.frozen == [0, 1, 8, 9]


def test_interlace_tie_drops_first_and_overlap_skipped() -> None:
    L = 8
    s1 = [0.5] * 7
    s3 = [0.1, 0.9, 0.8, 0.2, 0.7]  # (1,2,3) accepted; (2,3,4) overlaps; (4,5,6) accepted
    plan = select_layers(_scores(L, s1, None, s3), n_drop=2, strategy="interlace")
    assert plan.windows == [[1, 2, 3], [4, 5, 6]]
    assert plan.drop == [1, 4] and plan.finetune == [2, 5] and plan.anchor == [3, 6]


def test_interlace_pair_fallback() -> None:
    # 8 layers: candidates 0..6. Triplets by s3: (2,3,4) first; then no triplet fits in {0,1} or {5,6}.
    L = 8
    s1 = [0.3, 0.6, 0.5, 0.4, 0.2, 0.1, 0.9]
    s3 = [0.1, 0.2, 0.99, 0.3, 0.4]
    s2 = [0.2, 0.1, 0.5, 0.5, 0.5, 0.9]  # pairs: (5,6) best free
    plan = select_layers(_scores(L, s1, s2, s3), n_drop=3, strategy="interlace")
    assert plan.windows == [[2, 3, 4], [5, 6], [0, 1]]
    # (5,6): s1[6] = 0.9 > s1[5] -> drop 6, tune 5; (0,1): s1[1] > s1[0] -> drop 1, tune 0
    assert plan.drop == [1, 2, 6] and plan.finetune == [0, 3, 5] and plan.anchor == [4]
    assert plan.frozen == [7]


def test_protected_layer_can_be_finetune_or_anchor() -> None:
    L = 8
    s1 = [0.1, 0.2, 0.9, 0.8, 0.3, 0.4, 0.7]
    s3 = [0.1, 0.2, 0.95, 0.3, 0.4]
    # rule says drop 2; 2 is protected -> drop 3, finetune 2 (protected), anchor 4
    plan = select_layers(_scores(L, s1, None, s3), n_drop=1, strategy="interlace", protected=[2, 4])
    assert (plan.drop, plan.finetune, plan.anchor) == ([3], [2], [4])
    # both of the first two protected: the window is skipped
    plan = select_layers(_scores(L, s1, None, s3), n_drop=1, strategy="interlace", protected=[2, 3])
    assert plan.windows[0] != [2, 3, 4] and not set(plan.drop) & {2, 3}


def test_oa_always_drops_first() -> None:
    L = 8
    s1 = [0.1, 0.2, 0.9, 0.8, 0.3, 0.4, 0.7]
    s3 = [0.1, 0.2, 0.95, 0.3, 0.4]
    plan = select_layers(_scores(L, s1, None, s3), n_drop=1, strategy="oa")
    assert (plan.drop, plan.finetune, plan.anchor) == ([2], [3], [4])
    plan = select_layers(_scores(L, s1, None, s3), n_drop=1, strategy="oa", protected=[2])
    assert 2 not in plan.drop and plan.windows[0] != [2, 3, 4]


def test_tn_shortgpt_consecutive_random() -> None:
    L = 10
    s1 = [0.1, 0.2, 0.9, 0.85, 0.3, 0.4, 0.8, 0.7, 0.5]
    sc = LayerScores(num_layers=L, scores={1: s1})  # these strategies need pack-1 only
    tn = select_layers(sc, n_drop=3, strategy="tn")
    # ranking 2, 3(overlaps 2's pair), 6, 7(overlaps), 8 -> pairs (2,3), (6,7), (8,9)
    assert tn.windows == [[2, 3], [6, 7], [8, 9]] and tn.drop == [2, 6, 8] and tn.finetune == [3, 7, 9]
    sg = select_layers(sc, n_drop=3, strategy="shortgpt")
    assert sg.drop == [2, 3, 6] and sg.finetune == [4, 7] and sg.anchor == []
    cons = select_layers(sc, n_drop=2, strategy="consecutive")
    assert cons.drop == [2, 3] and cons.finetune == [4]
    cons_p = select_layers(sc, n_drop=2, strategy="consecutive", protected=[3])
    assert cons_p.drop == [6, 7] and cons_p.finetune == [8]
    r1 = select_layers(sc, n_drop=4, strategy="random", seed=1)
    r2 = select_layers(sc, n_drop=4, strategy="random", seed=1)
    assert r1 == r2 and 9 not in r1.drop
    seeds = {tuple(select_layers(sc, n_drop=4, strategy="random", seed=s).drop) for s in range(10)}
    assert len(seeds) > 1
    rnd = select_layers(None, n_drop=2, strategy="random", num_layers=6, protected=[0, 1], seed=3)
    assert not set(rnd.drop) & {0, 1, 5}


def test_consecutive_uses_block_score_when_available() -> None:
    L = 8
    s1 = [0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]
    s2 = [0.1, 0.1, 0.1, 0.1, 0.95, 0.1]  # block (4,5) is the most similar end to end
    plan = select_layers(_scores(L, s1, s2), n_drop=2, strategy="consecutive")
    assert plan.drop == [4, 5]
    plan = select_layers(_scores(L, s1, s2), n_drop=4, strategy="consecutive")  # no pack-4: mean pack-1
    assert plan.drop == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (
            {"num_layers": 8, "scores": {"1": [0.5] * 6, "2": [0.5] * 6, "3": [0.5] * 5}},
            r"scores\['1'\] has 6 entries",
        ),
        (
            {
                "num_layers": 8,
                "scores": {"1": [0.5] * 7, "2": [0.5] * 6, "3": [0.5, float("nan"), 0.5, 0.5, 0.5]},
            },
            "NaN",
        ),
        (
            {"num_layers": 8, "scores": {"1": [0.5] * 7, "2": [0.5] * 6, "3": [0.5, None, 0.5, 0.5, 0.5]}},
            "NaN",
        ),
        ({"num_layers": 8, "scores": {"1": [0.5] * 7, "x": []}}, "not an integer"),
        ({"num_layers": 1, "scores": {"1": []}}, "num_layers"),
        ({"scores": {}}, "num_layers and scores"),
        ({"num_layers": 8, "scores": {"1": ["a"] * 7}}, "not a number"),
    ],
)
def test_bad_scores(doc: dict, match: str) -> None:
    with pytest.raises(InterlaceError, match=match):
        LayerScores.from_json(doc)


def test_bad_selection_requests() -> None:
    sc = _scores(8, [0.5] * 7)
    with pytest.raises(InterlaceError, match="cannot drop 7 of 8"):
        select_layers(sc, n_drop=7, strategy="shortgpt")
    with pytest.raises(InterlaceError, match="unknown strategy"):
        select_layers(sc, n_drop=1, strategy="magic")
    with pytest.raises(InterlaceError, match="protected layer 9"):
        select_layers(sc, n_drop=1, strategy="shortgpt", protected=[9])
    with pytest.raises(InterlaceError, match="can fit only"):
        select_layers(sc, n_drop=4, strategy="interlace")  # 7 candidates: at most 3 pairs/triplets
    with pytest.raises(InterlaceError, match="missing window size"):
        select_layers(LayerScores(num_layers=8, scores={1: [0.5] * 7}), n_drop=1, strategy="interlace")
    with pytest.raises(InterlaceError, match="needs layer scores"):
        select_layers(None, n_drop=1, strategy="interlace", num_layers=8)
    for r in (0, -0.1, 1.0, 0.05, 0.9):
        with pytest.raises(InterlaceError, match="ratio"):
            n_drop_for_ratio(8, r)


def test_plan_json_roundtrip_and_validation(tmp_path) -> None:
    plan = select_layers(
        _scores(8, [0.5] * 7, None, [0.1, 0.2, 0.9, 0.3, 0.4]), n_drop=1, strategy="interlace", ratio=0.15
    )
    p = save_plan(plan, tmp_path / "plan.json")
    import json

    doc = json.loads(p.read_text())
    assert {"numLayers", "drop", "finetune", "anchor", "frozen", "strategy", "ratio"} <= set(doc)
    assert load_plan(p) == plan
    # older snake_case files still load
    p.write_text(json.dumps(plan.model_dump(mode="json")))
    assert load_plan(p) == plan
    doc["drop"] = [2, 9]
    p.write_text(json.dumps(doc))
    with pytest.raises(InterlaceError, match=r"outside 0\.\.7"):
        load_plan(p)
    doc["drop"] = [2, 3]
    p.write_text(json.dumps(doc))
    with pytest.raises(InterlaceError, match="both"):
        load_plan(p)
    with pytest.raises(InterlaceError, match="no such plan"):
        load_plan(tmp_path / "missing.json")


def test_protected_layers_helper() -> None:
    class Parts:
        def __init__(self) -> None:
            self.deepstack_layers = [0, 1, 2]

    spec = PruningSpec(ratio=0.25, protected_layers=[5])
    assert protected_layers(spec, Parts()) == [0, 1, 2, 5]
    spec = PruningSpec(ratio=0.25, protected_layers=[5], deepstack_policy="position")
    assert protected_layers(spec, Parts()) == [5]
    with pytest.raises(InterlaceError, match="protectedLayers"):
        protected_layers(PruningSpec(ratio=0.2, protected_layers=[40]), None, num_layers=36)


# ----------------------------------------------------------------------------------- properties

unit = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)


@st.composite
def problems(draw: st.DrawFn) -> tuple[LayerScores, int, list[int]]:
    L = draw(st.integers(min_value=4, max_value=40))
    # coarse values so ties happen
    val = st.one_of(unit, st.sampled_from([0.25, 0.5, 0.75]))
    scores = {k: draw(st.lists(val, min_size=L - k, max_size=L - k)) for k in (1, 2, 3)}
    n_drop = draw(st.integers(min_value=1, max_value=max(1, L // 3)))
    protected = draw(st.lists(st.integers(min_value=0, max_value=L - 1), max_size=L // 4, unique=True))
    return LayerScores(num_layers=L, scores=scores), n_drop, sorted(protected)


def _rank_key(vals: list[float], i: int) -> tuple[float, int]:
    return (-vals[i], i)


def _common(plan: LayerPlan, L: int, n_drop: int, protected: list[int]) -> None:
    everything = plan.drop + plan.finetune + plan.anchor + plan.frozen
    assert sorted(everything) == list(range(L))
    assert len(plan.drop) == n_drop
    assert not set(plan.drop) & set(protected)
    assert L - 1 not in plan.drop


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["interlace", "oa"]))
def test_windowed_rules(problem: tuple[LayerScores, int, list[int]], strategy: str) -> None:
    sc, n_drop, protected = problem
    L = sc.num_layers
    try:
        plan = select_layers(sc, n_drop=n_drop, strategy=strategy, protected=protected)
    except InterlaceError as err:
        assert "can fit only" in str(err)
        return
    _common(plan, L, n_drop, protected)
    s1, s2, s3 = sc.scores[1], sc.scores[2], sc.scores[3]
    prot = set(protected)
    # windows are non-overlapping, of consecutive layers, triplets before pairs
    flat = [i for w in plan.windows for i in w]
    assert len(flat) == len(set(flat))
    sizes = [len(w) for w in plan.windows]
    assert sizes == sorted(sizes, reverse=True) and set(sizes) <= {2, 3}
    triplets = [w for w in plan.windows if len(w) == 3]
    pairs = [w for w in plan.windows if len(w) == 2]
    assert plan.anchor == sorted(w[2] for w in triplets)
    for w in plan.windows:
        assert w == list(range(w[0], w[0] + len(w)))
        a, b = w[0], w[1]
        dropped = [i for i in (a, b) if i in plan.drop]
        tuned = [i for i in (a, b) if i in plan.finetune]
        assert len(dropped) == 1 and len(tuned) == 1
        if strategy == "oa":
            assert dropped == [a]
        else:
            preferred = a if s1[a] >= s1[b] else b
            other = b if preferred == a else a
            assert dropped == [preferred if preferred not in prot else other]

    def usable(w0: int) -> bool:
        return (w0 not in prot) if strategy == "oa" else not ({w0, w0 + 1} <= prot)

    # greedy: a better-ranked window that was not taken overlaps one accepted before, or is unusable
    for size, vals, accepted in ((3, s3, triplets), (2, s2, pairs)):
        for w in accepted:
            used_before = {i for x in plan.windows[: plan.windows.index(w)] for i in x}
            for j in range(len(vals)):
                if (
                    _rank_key(vals, j) < _rank_key(vals, w[0])
                    and [j + t for t in range(size)] not in accepted
                ):
                    cand = set(range(j, j + size))
                    assert cand & used_before or not usable(j), (size, j, w)
    # pairs only when no usable triplet was left free
    if pairs:
        used = {i for w in triplets for i in w}
        for j in range(len(s3)):
            assert set(range(j, j + 3)) & used or not usable(j)


@settings(max_examples=120, deadline=None)
@given(problems())
def test_tn_rules(problem: tuple[LayerScores, int, list[int]]) -> None:
    sc, n_drop, protected = problem
    try:
        plan = select_layers(sc, n_drop=n_drop, strategy="tn", protected=protected)
    except InterlaceError as err:
        assert "can fit only" in str(err)
        return
    _common(plan, sc.num_layers, n_drop, protected)
    assert all(len(w) == 2 and w[0] in plan.drop and w[1] in plan.finetune for w in plan.windows)
    assert plan.finetune == sorted(d + 1 for d in plan.drop)


@settings(max_examples=120, deadline=None)
@given(problems(), st.sampled_from(["shortgpt", "consecutive", "random"]), st.integers(0, 1000))
def test_baseline_rules(problem: tuple[LayerScores, int, list[int]], strategy: str, seed: int) -> None:
    sc, n_drop, protected = problem
    L = sc.num_layers
    try:
        plan = select_layers(sc, n_drop=n_drop, strategy=strategy, protected=protected, seed=seed)
    except InterlaceError as err:
        assert "can fit only" in str(err)
        assume(False)
        return
    _common(plan, L, n_drop, protected)
    d = set(plan.drop)
    assert plan.finetune == sorted({i + 1 for i in d if i + 1 not in d})
    assert plan.anchor == []
    s1 = sc.scores[1]
    if strategy == "shortgpt":
        # every dropped candidate has Block Influence (1 - pack-1) no larger than any kept candidate
        kept = [i for i in range(L - 1) if i not in d and i not in protected]
        if kept:
            assert max(1 - s1[i] for i in d) <= min(1 - s1[i] for i in kept) + 1e-12
    if strategy == "consecutive":
        assert plan.drop == list(range(plan.drop[0], plan.drop[0] + n_drop))


def test_scores_json_nan_literal_from_file(tmp_path) -> None:
    p = tmp_path / "s.json"
    p.write_text('{"num_layers": 4, "scores": {"1": [0.1, NaN, 0.2]}}')
    with pytest.raises(InterlaceError, match=r"scores\['1'\]\[1\] is nan"):
        LayerScores.load(p)
    p.write_text('{"num_layers": 4, "scores": {"1": [0.1, -Infinity, 0.2]}}')
    with pytest.raises(InterlaceError, match=r"scores\['1'\]\[1\] is -inf"):
        LayerScores.load(p)
    # the same file with a finite value loads, values intact: the check rejects only non-finite scores
    p.write_text('{"num_layers": 4, "scores": {"1": [0.1, 0.3, 0.2]}}')
    loaded = LayerScores.load(p)
    assert loaded.num_layers == 4
    assert loaded.scores[1] == [0.1, 0.3, 0.2]
