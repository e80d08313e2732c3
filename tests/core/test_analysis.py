"""Similarity scores against a straightforward reference computation (output_hidden_states, one
sample at a time, explicit masking), on the same inputs, with padding on either side."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from interlace.errors import InterlaceError
from interlace.stages.analyze.calibration import calibration_batches
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.analyze.similarity import analyze
from tests.fixtures.tiny import tiny, tiny_samples

MAX_LEN = 256


def _reference(model, processor, samples, *, max_window: int = 3) -> dict[int, list[float]]:
    """Per sample (batch of 1, no padding): all hidden states via output_hidden_states=True.

    In transformers 5, hidden_states[0] is the embedding output and hidden_states[i] the raw output of
    layer i-1 (before any DeepStack addition); DeepStack features are added here explicitly to the
    input of the layers that receive them.
    """
    L = model.config.get_text_config().num_hidden_layers
    sums = {k: [0.0] * (L - k) for k in range(1, max_window + 1)}
    n = 0
    for batch in calibration_batches(samples, processor, batch_size=1, max_length=MAX_LEN):
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True, use_cache=False)
        hs = [h[0].double() for h in out.hidden_states]  # (T, D) each
        assert len(hs) == L + 1
        inputs = list(hs[:L])  # what layer i receives
        ds_levels = _deepstack(model, batch)
        if ds_levels:
            pos = batch["input_ids"][0] == model.config.image_token_id
            for j, feat in enumerate(ds_levels):
                inputs[j + 1] = inputs[j + 1].clone()
                inputs[j + 1][pos] += feat.double()
        mask = batch["attention_mask"][0].bool()
        for k in sums:
            for i in range(L - k):
                cos = F.cosine_similarity(inputs[i][mask].float(), hs[i + k][mask].float(), dim=-1)
                sums[k][i] += cos.double().mean().item()
        n += 1
    return {k: [v / n for v in vals] for k, vals in sums.items()}


def _deepstack(model, batch) -> list[torch.Tensor]:
    if "pixel_values" not in batch or not hasattr(model.config, "vision_config"):
        return []
    if not getattr(model.config.vision_config, "deepstack_visual_indexes", None):
        return []
    with torch.no_grad():
        vo = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    return [torch.cat(level, dim=0) for level in vo.deepstack_features]


def _assert_close(got: LayerScores, want: dict[int, list[float]], tol: float = 2e-5) -> None:
    assert set(got.scores) == set(want)
    for k in want:
        assert len(got.scores[k]) == len(want[k]) == got.num_layers - k
        for i, (a, b) in enumerate(zip(got.scores[k], want[k], strict=True)):
            assert math.isclose(a, b, abs_tol=tol), (k, i, a, b)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_scores_match_reference(kind: str, side: str) -> None:
    model, proc = tiny(kind)
    tok = getattr(proc, "tokenizer", proc)
    tok.padding_side = side
    samples = tiny_samples(5, images=True)
    batches = list(calibration_batches(samples, proc, batch_size=3, max_length=MAX_LEN))
    # the batches really are padded
    lengths = [int(x) for b in batches for x in b["attention_mask"].sum(1)]
    assert len(set(lengths)) > 1 and any((b["attention_mask"] == 0).any() for b in batches)
    if kind != "llama":
        assert any("pixel_values" in b for b in batches)
    got = analyze(model, batches, show_progress=False)
    assert got.num_layers == 8 and got.meta["num_samples"] == 5
    _assert_close(got, _reference(model, proc, samples))


def test_deepstack_changes_scores_of_receiving_windows() -> None:
    """The reference without the explicit DeepStack addition disagrees on windows starting at layers
    1..3 of Qwen3-VL (so the test above really checks the DeepStack handling) and agrees elsewhere."""
    model, proc = tiny("qwen3_vl")
    samples = tiny_samples(4, images=True)
    got = analyze(
        model, calibration_batches(samples, proc, batch_size=2, max_length=MAX_LEN), show_progress=False
    )
    # reference that ignores DeepStack: cos(h[i], h[i+k]) of transformers 5 hidden_states
    import tests.core.test_analysis as me

    orig = me._deepstack
    me._deepstack = lambda model, batch: []
    try:
        plain = _reference(model, proc, samples)
    finally:
        me._deepstack = orig
    for i in range(got.num_layers - 1):
        differs = abs(got.scores[1][i] - plain[1][i]) > 1e-4
        assert differs == (i in (1, 2, 3)), (i, got.scores[1][i], plain[1][i])


def test_deterministic_and_batch_size_invariant() -> None:
    model, proc = tiny("qwen2_5_vl")
    samples = tiny_samples(6, images=True)
    a = analyze(
        model, calibration_batches(samples, proc, batch_size=4, max_length=MAX_LEN), show_progress=False
    )
    b = analyze(
        model, calibration_batches(samples, proc, batch_size=4, max_length=MAX_LEN), show_progress=False
    )
    c = analyze(
        model, calibration_batches(samples, proc, batch_size=1, max_length=MAX_LEN), show_progress=False
    )
    assert a.scores == b.scores
    _assert_close(a, c.scores)


def test_hooks_removed_and_no_grad(tmp_path) -> None:
    model, tok = tiny("qwen3")
    samples = tiny_samples(3, images=False)
    seen = []
    scores = analyze(
        model,
        calibration_batches(samples, tok, batch_size=2, max_length=MAX_LEN),
        progress=lambda done, total: seen.append(done),
        show_progress=False,
    )
    assert seen == [2, 3]
    for layer in model.model.layers:
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    path = scores.save(tmp_path / "scores.json")
    back = LayerScores.load(path)
    assert back.num_layers == 8 and back.scores == scores.scores
    assert all(len(back.scores[k]) == 8 - k for k in (1, 2, 3))


def test_max_window_and_empty_input() -> None:
    model, tok = tiny("llama")
    samples = tiny_samples(2, images=False)
    s = analyze(
        model,
        calibration_batches(samples, tok, batch_size=2, max_length=MAX_LEN),
        max_window=5,
        show_progress=False,
    )
    assert sorted(s.scores) == [1, 2, 3, 4, 5] and len(s.scores[5]) == 3
    with pytest.raises(InterlaceError, match="max_window"):
        analyze(model, [], max_window=8, show_progress=False)
    with pytest.raises(InterlaceError, match="no calibration samples"):
        analyze(model, [], show_progress=False)


def test_sums_of_disjoint_shards_merge_to_the_whole() -> None:
    """What data-parallel workers return (AnalysisSums), merged, equals one pass over all batches."""
    from interlace.stages.analyze.similarity import AnalysisSums, analysis_sums

    model, processor = tiny("llama")
    samples = tiny_samples(7, images=False)
    batches = list(calibration_batches(samples, processor, batch_size=2, max_length=MAX_LEN))
    whole = analyze(model, batches, show_progress=False)
    shards = [analysis_sums(model, batches[w::2], show_progress=False) for w in range(2)]
    merged = AnalysisSums.merge(shards).to_scores()
    assert merged.meta["num_samples"] == whole.meta["num_samples"] == 7
    for k in whole.scores:
        torch.testing.assert_close(torch.tensor(merged.scores[k]), torch.tensor(whole.scores[k]),
                                   rtol=1e-6, atol=1e-7)
    with pytest.raises(InterlaceError, match="no analysis shards"):
        AnalysisSums.merge([])
