"""Distillation healing (spec.finetune.distillation) at tiny size.

The unpruned model is a frozen teacher; the loss over the trained (assistant) tokens is
(1 - w) x cross-entropy + w x T^2 x KL(teacher || student) on temperature-T softened logits.
Without Ray: the KL term is zero when student = teacher and equals the formula otherwise, the mix is
what the step minimises, and gradients reach only the trainable layers (never the teacher). On Ray
Train: FSDP2 with a worker killed mid-run resumes and matches DDP step by step and weight by weight
(frozen tensors bit-identical; the suite's one FSDP2-on-Ray-Train run), so does the teacher
precomputed before training (distillation.topK over the whole vocabulary), the checkpoint
fingerprint keeps a run from resuming across a distillation change, and `interlace run -f` reports
the loss parts.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from interlace.errors import InterlaceError
from interlace.runtime.placement import placement_of
from interlace.schema.spec import DistillationSpec, ModelSpec, SpecError, parse_prunejob
from interlace.stages.finetune.checkpoint import STATE_FILE, plan_fingerprint, run_fingerprint
from interlace.stages.finetune.driver import FAULT_MARKER_ENV, FAULT_STEP_ENV, finetune
from interlace.stages.finetune.step import TopKTargets, accumulate_gradients, teacher_top_k, token_losses
from tests.train.conftest import hand_plan, pattern_samples, pattern_spec

CPU = torch.device("cpu")


def _batches(processor: Any, n: int = 2, batch: int = 2) -> list[tuple[dict[str, torch.Tensor], int]]:
    from interlace.data.chat import tokenizer_of
    from interlace.data.encode import collate, encode_sample

    tok = tokenizer_of(processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    samples = pattern_samples(n * batch)
    out = []
    for k in range(n):
        exs = [encode_sample(s, processor, max_length=64) for s in samples[k * batch : (k + 1) * batch]]
        out.append((collate(exs, pad), sum(int(e["input_ids"].shape[0]) for e in exs)))
    return out


@pytest.fixture(scope="module")
def unpruned() -> tuple[Any, Any]:
    from tests.fixtures.tiny import tiny

    model, proc = tiny("llama")
    model.eval()
    return model, proc


def _pruned_student(teacher: Any) -> Any:
    from interlace.stages.finetune.freeze import apply_freezing
    from interlace.stages.prune import prune_model

    student = prune_model(copy.deepcopy(teacher), hand_plan(), deepstack_policy="position")
    apply_freezing(student, hand_plan())
    student.train()
    return student


def test_kl_is_zero_when_student_is_teacher_and_the_formula_otherwise(unpruned: tuple[Any, Any]) -> None:
    teacher, proc = unpruned
    batch, _ = _batches(proc, n=1)[0]
    # Nothing pruned: the student is the teacher's weights.
    ce, kl = token_losses(copy.deepcopy(teacher), batch, CPU, teacher=teacher, temperature=2.0)
    assert kl is not None and ce.item() > 1.0
    assert abs(kl.item()) < 1e-4 * ce.item()
    # Without a teacher there is no KL term.
    assert token_losses(teacher, batch, CPU)[1] is None

    # The pruned student: KL > 0 and equal to T^2 sum_tokens sum_v p_t (log p_t - log p_s).
    student = _pruned_student(teacher)
    t = 2.0
    ce, kl = token_losses(student, batch, CPU, teacher=teacher, temperature=t)
    assert kl is not None and kl.item() > 1e-3
    with torch.no_grad():
        mask = batch["labels"][:, 1:] != -100
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        s = student(**inputs).logits[:, :-1][mask].float()
        te = teacher(**inputs).logits[:, :-1][mask].float()
        p_t = F.softmax(te / t, dim=-1)
        want = t * t * (p_t * (F.log_softmax(te / t, -1) - F.log_softmax(s / t, -1))).sum()
        want_ce = F.cross_entropy(s, batch["labels"][:, 1:][mask], reduction="sum")
    assert kl.item() == pytest.approx(want.item(), rel=1e-4)
    assert ce.item() == pytest.approx(want_ce.item(), rel=1e-5)


def test_gradients_reach_only_the_trainable_layers_with_distillation(unpruned: tuple[Any, Any]) -> None:
    teacher = copy.deepcopy(unpruned[0])
    teacher.requires_grad_(False)
    student = _pruned_student(unpruned[0])
    group = _batches(unpruned[1], n=2)
    d = DistillationSpec(weight=0.5, temperature=2.0)
    losses = accumulate_gradients(
        student, group, device=CPU, amp_dtype=None, world=1, teacher=teacher, distillation=d
    )
    assert losses.kl is not None and losses.kl > 0 and losses.ce > 0
    assert losses.loss == pytest.approx(0.5 * losses.ce + 0.5 * losses.kl, rel=1e-6)

    with_grad = {n for n, p in student.named_parameters() if p.grad is not None}
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    # After surgery the finetune layers 1 and 4 sit at positions 1 and 3; nothing else trains.
    assert trainable and all(".layers.1." in n or ".layers.3." in n for n in trainable)
    assert all(student.get_parameter(n).grad.abs().sum() > 0 for n in trainable)  # type: ignore[union-attr]
    assert all(p.grad is None for p in teacher.parameters())

    # The KL part alone moves the trainable layers too (weight 1: no cross-entropy at all).
    student.zero_grad(set_to_none=True)
    only_kl = accumulate_gradients(
        student, group, device=CPU, amp_dtype=None, world=1, teacher=teacher,
        distillation=DistillationSpec(weight=1.0, temperature=1.0),
    )
    assert only_kl.loss == pytest.approx(only_kl.kl)
    assert {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0} == trainable


def test_precomputed_top_k_is_the_full_kl_at_full_vocabulary_and_the_formula_below(unpruned: tuple[Any, Any]) -> None:
    teacher, proc = unpruned
    student = _pruned_student(teacher)
    batch, _ = _batches(proc, n=1)[0]
    t = 2.0
    vocab = teacher.config.vocab_size
    ce_full, kl_full = token_losses(student, batch, CPU, teacher=teacher, temperature=t)
    everything = teacher_top_k(teacher, batch, CPU, temperature=t, k=vocab)
    n_trained = int((batch["labels"][:, 1:] != -100).sum())
    assert everything.log_p.shape == everything.ids.shape == (n_trained, vocab)
    assert everything.ids.dtype == torch.int32 and everything.log_p.dtype == torch.float32
    assert bool((everything.log_p[:, :-1] >= everything.log_p[:, 1:]).all())  # largest first
    ce, kl = token_losses(student, batch, CPU, temperature=t, targets=everything)
    assert kl is not None and kl_full is not None
    assert ce.item() == pytest.approx(ce_full.item(), rel=1e-6)
    assert kl.item() == pytest.approx(kl_full.item(), rel=1e-4)  # k = vocabulary: the same KL

    # k < vocabulary: T^2 sum_k p (log p - log q), p the teacher renormalised over its top k, q the
    # student's softened probabilities over the whole vocabulary at those ids.
    k = 5
    top = teacher_top_k(teacher, batch, CPU, temperature=t, k=k)
    assert top.log_p.shape == (n_trained, k) and top.nbytes == n_trained * k * (4 + 4)
    _, kl_k = token_losses(student, batch, CPU, temperature=t, targets=top)
    with torch.no_grad():
        mask = batch["labels"][:, 1:] != -100
        inputs = {key: v for key, v in batch.items() if key != "labels"}
        s = F.log_softmax(student(**inputs).logits[:, :-1][mask].float() / t, -1)
        te = F.log_softmax(teacher(**inputs).logits[:, :-1][mask].float() / t, -1)
        vals, ids = te.topk(k, dim=-1)
        p = F.softmax(vals, dim=-1)
        want = t * t * (p * (p.log() - s.gather(-1, ids))).sum()
    assert kl_k is not None and kl_k.item() == pytest.approx(want.item(), rel=1e-4) and kl_k.item() > 0
    # The student = the teacher: what remains is the mass outside the top k, -T^2 sum log(sum_k q) > 0.
    _, kl_self = token_losses(copy.deepcopy(teacher), batch, CPU, temperature=t, targets=top)
    outside = -(t * t) * torch.logsumexp(vals, dim=-1).sum()
    assert kl_self is not None and kl_self.item() == pytest.approx(outside.item(), rel=1e-3)
    # An id the teacher gives no probability at all (-inf, e.g. a masked token) adds nothing: 0 log 0 = 0.
    masked = TopKTargets(log_p=torch.cat([top.log_p[:, :-1], torch.full_like(top.log_p[:, -1:], -torch.inf)], -1),
                         ids=top.ids)
    first = TopKTargets(log_p=top.log_p[:, :-1], ids=top.ids[:, :-1])
    _, kl_masked = token_losses(student, batch, CPU, temperature=t, targets=masked)
    _, kl_first = token_losses(student, batch, CPU, temperature=t, targets=first)
    assert kl_masked is not None and kl_first is not None and torch.isfinite(kl_masked)
    assert kl_masked.item() == pytest.approx(kl_first.item(), rel=1e-5)
    # Targets of another micro-batch do not line up: refused, not silently misaligned.
    other, _ = _batches(proc, n=2, batch=1)[1]
    with pytest.raises(ValueError, match="other micro-batches"):
        token_losses(student, other, CPU, temperature=t, targets=top)


def test_precomputed_targets_train_only_the_trainable_layers(unpruned: tuple[Any, Any]) -> None:
    teacher, proc = unpruned
    student = _pruned_student(teacher)
    group = _batches(proc, n=2)
    d = DistillationSpec(weight=0.5, temperature=2.0, top_k=8)
    targets = [teacher_top_k(teacher, b, CPU, temperature=2.0, k=8) for b, _ in group]
    losses = accumulate_gradients(student, group, device=CPU, amp_dtype=None, world=1, distillation=d, targets=targets)
    assert losses.kl is not None and losses.kl > 0
    assert losses.loss == pytest.approx(0.5 * losses.ce + 0.5 * losses.kl, rel=1e-6)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert {n for n, p in student.named_parameters() if p.grad is not None} == trainable
    assert all(teacher.get_parameter(n).grad is None for n, _ in teacher.named_parameters())
    with pytest.raises(ValueError, match="1 precomputed teacher targets for 2 micro-batches"):
        accumulate_gradients(student, group, device=CPU, amp_dtype=None, world=1, distillation=d, targets=targets[:1])


def test_top_k_is_validated_and_part_of_the_resume_fingerprint() -> None:
    base = {
        "apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "d"},
        "spec": {"model": {"source": "builtin:smollm2-135m"}, "finetune": {"distillation": {"topK": 0}}},
    }
    with pytest.raises(SpecError, match=r"spec\.finetune\.distillation\.topK"):
        parse_prunejob(base)
    plan = hand_plan()
    plain = DistillationSpec(weight=0.5, temperature=2.0)
    # A setting without topK keeps its fingerprint: the formula before topK existed, so checkpoints
    # written then still resume.
    before = json.dumps({"plan": plan_fingerprint(plan), "distillation": {"weight": 0.5, "temperature": 2.0}},
                        sort_keys=True)
    assert run_fingerprint(plan, plain) == hashlib.sha256(before.encode()).hexdigest()[:16]
    assert run_fingerprint(plan, DistillationSpec(weight=0.5, temperature=2.0, top_k=64)) != run_fingerprint(plan, plain)


def test_a_spec_with_distillation_round_trips_and_absent_means_off() -> None:
    doc = {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "d"},
        "spec": {
            "model": {"source": "builtin:smollm2-135m"},
            "pruning": {"ratio": 0.2},
            "finetune": {"distillation": {"weight": 0.25, "temperature": 3.0}},
        },
    }
    job = parse_prunejob(doc)
    assert job.spec.finetune.distillation == DistillationSpec(weight=0.25, temperature=3.0)
    assert job.spec.to_wire()["finetune"]["distillation"] == {"weight": 0.25, "temperature": 3.0}
    wire = {**doc, "spec": job.spec.to_wire()}
    assert parse_prunejob(yaml.safe_load(yaml.safe_dump(wire))).spec == job.spec
    doc["spec"]["finetune"] = {}
    assert parse_prunejob(doc).spec.finetune.distillation is None


def test_distillation_without_a_teacher_is_refused(pruned_llama: tuple[Path, Any], tmp_path: Path) -> None:
    model_dir, plan = pruned_llama
    with pytest.raises(InterlaceError, match="needs the unpruned model"):
        finetune(model_dir, plan, pattern_spec(distillation={}), output_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("teacher") / "llama")  # what pruned_llama was cut from


@pytest.mark.ray
@pytest.mark.slow
def test_distillation_under_fsdp2_resumes_after_a_worker_dies_and_matches_ddp(
    ray_session, pruned_llama, teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, plan = pruned_llama
    samples = pattern_samples()
    teacher = ModelSpec(source=str(teacher_dir))
    distill = {"weight": 0.5, "temperature": 2.0}
    two = placement_of(2, 0)

    monkeypatch.setenv(FAULT_STEP_ENV, "3")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "crash"))
    spec = pattern_spec(parallelism="fsdp", max_steps=6, max_failures=1, distillation=distill)
    fsdp = finetune(model_dir, plan, spec, output_dir=tmp_path / "fsdp", model=teacher, placement=two, samples=samples)
    assert (tmp_path / "crash").exists()
    assert fsdp.attempt_starts == [0, 2] and fsdp.steps == 6 and fsdp.wrapping == "fsdp2"
    monkeypatch.delenv(FAULT_STEP_ENV)
    monkeypatch.delenv(FAULT_MARKER_ENV)

    spec = pattern_spec(parallelism="ddp", max_steps=6, distillation=distill)
    ddp = finetune(model_dir, plan, spec, output_dir=tmp_path / "ddp", model=teacher, placement=two, samples=samples)
    assert ddp.attempt_starts == [0] and ddp.wrapping == "ddp"

    # Every step reported its parts, the resumed run kept the ones before the crash.
    for r in (fsdp, ddp):
        assert len(r.ce_losses) == len(r.kl_losses) == len(r.losses) == 6
        assert all(kl > 0 for kl in r.kl_losses)
        for loss, ce, kl in zip(r.losses, r.ce_losses, r.kl_losses, strict=True):
            assert loss == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-5)
    assert fsdp.losses == pytest.approx(ddp.losses, rel=1e-4, abs=1e-5)
    assert fsdp.kl_losses == pytest.approx(ddp.kl_losses, rel=1e-4, abs=1e-5)
    assert fsdp.losses[-1] < fsdp.losses[0], fsdp.losses
    state = json.loads((fsdp.checkpoint_dir / STATE_FILE).read_text())
    assert len(state["kl_losses"]) == 6

    # Sharding changes where the gradient lives, not its value, and the resume restored the data
    # position, the optimizer's moments and the schedule: the finished models agree to float32
    # rounding, frozen tensors bit-identical. (This run is also the suite's FSDP2-on-Ray-Train test:
    # wrapping and checkpointing do not depend on the teacher, and one run of it costs CI once.)
    before = load_file(str(model_dir / "model.safetensors"))
    after_fsdp = load_file(str(fsdp.model_dir / "model.safetensors"))
    after_ddp = load_file(str(ddp.model_dir / "model.safetensors"))
    assert before.keys() == after_fsdp.keys() == after_ddp.keys()
    trainable = {k for k in before if ".layers.1." in k or ".layers.3." in k}
    assert trainable
    for k in before:
        if k in trainable:
            assert not torch.equal(before[k], after_fsdp[k]), f"{k} did not train under FSDP2"
            torch.testing.assert_close(after_fsdp[k], after_ddp[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(before[k], after_fsdp[k]), f"frozen {k} changed under FSDP2"
    # The FSDP2 checkpoint holds full (unsharded) trainable tensors, like DDP's.
    ckpt = load_file(str(fsdp.checkpoint_dir / "trainable.safetensors"))
    assert set(ckpt) == trainable
    assert all(ckpt[k].shape == before[k].shape for k in ckpt)

    # distillation.topK over the whole vocabulary: the teacher runs before training (and again from
    # the resume position after the kill) instead of next to the student, and every step's losses are
    # the teacher-on-workers run's: the precomputed targets line up with the batches they were made for.
    monkeypatch.setenv(FAULT_STEP_ENV, "3")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "crash-topk"))
    vocab = json.loads((teacher_dir / "config.json").read_text())["vocab_size"]
    spec = pattern_spec(parallelism="ddp", max_steps=6, max_failures=1, distillation={**distill, "topK": vocab})
    topk = finetune(model_dir, plan, spec, output_dir=tmp_path / "topk", model=teacher, placement=two, samples=samples)
    assert (tmp_path / "crash-topk").exists() and topk.attempt_starts == [0, 2]
    assert topk.losses == pytest.approx(ddp.losses, rel=1e-4, abs=1e-5)
    assert topk.kl_losses == pytest.approx(ddp.kl_losses, rel=1e-4, abs=1e-5)
    monkeypatch.delenv(FAULT_STEP_ENV)
    monkeypatch.delenv(FAULT_MARKER_ENV)

    # The distillation setting is part of what a checkpoint must match to be resumed.
    with pytest.raises(InterlaceError, match="distillation"):
        finetune(model_dir, plan, pattern_spec(max_steps=8), output_dir=tmp_path / "ddp", placement=two, samples=samples)
    other = pattern_spec(max_steps=8, distillation={"weight": 0.9, "temperature": 2.0})
    with pytest.raises(InterlaceError, match="distillation"):
        finetune(model_dir, plan, other, output_dir=tmp_path / "ddp", model=teacher, placement=two, samples=samples)


@pytest.mark.ray
@pytest.mark.slow
def test_interlace_run_with_distillation_reports_the_loss_parts(ray_session, tmp_path: Path) -> None:
    from interlace.cli import main
    from tests.train.test_run_cli import _tiny_job

    f = _tiny_job(tmp_path)
    doc = yaml.safe_load(f.read_text())
    doc["spec"]["finetune"]["distillation"] = {"weight": 0.5, "temperature": 2.0}
    doc["spec"]["evaluation"]["enabled"] = False
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["run", "-f", str(f), "--output", str(out)]) == 0

    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    steps = [e["data"] for e in events if e["event"] == "progress" and "finetune step" in (e["data"].get("message") or "")]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for s in steps:
        parts = {m["name"]: m["value"] for m in s["metrics"]}
        assert parts["kl"] > 0 and parts["ce"] > 0
        assert s["loss"] == pytest.approx(0.5 * parts["ce"] + 0.5 * parts["kl"], rel=1e-5)
    ckpt = sorted((out / "checkpoints").glob("finetune-*/step-*"))[-1]
    assert len(json.loads((ckpt / STATE_FILE).read_text())["kl_losses"]) == 4
    assert (out / "model" / "config.json").is_file()
