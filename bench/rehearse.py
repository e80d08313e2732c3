"""Rehearse one finetune step of a PruneJob on CPU, without a GPU, weights or the hub.

What it catches, at the shipped examples' own settings: a collective the step issues on a tensor of
the wrong device (before the fix in interlace.stages.finetune.step, its label counts were all-reduced on
the CPU and pass 1 failed with "No backend type associated with device type cpu", as NCCL would at
the first multi-GPU step); a step whose peak memory exceeds the job's own estimate
(interlace.runtime.costs, the pre-launch check). Figures and what it cannot see: docs/gpu.md.

    python bench/rehearse.py -f manifests/examples/qwen3-vl-8b-25.yaml --world 8

It builds the spec's model from its config (the Qwen3-VL configs transcribed in bench/gpu.py; no
weights), applies the plan's surgery and freezing (interlace.stages.prune / finetune.freeze), wraps it
(`_wrap`: DDP or FSDP2) and runs the library's own training step (`accumulate_gradients`,
`apply_gradients`) at the spec's micro-batch, maxLength, precision, parallelism, gradient
checkpointing and distillation, under FakeTensorMode (no memory, no FLOPs) with a fake process group
of N ranks (torch's "fake" backend). The ranks are symmetric, so rank 0 stands for all of them.

Two passes (why: autograd's engine asks the CUDA driver for a primary context on fake CUDA tensors,
"hasPrimaryContext expects a valid device index" on a machine without a GPU, so a backward pass on
fake CUDA tensors cannot run here):

1. collectives: the step on fake "cuda" tensors, the process group bound to CUDA only
   (`backend="cuda:fake"`), so a collective on a CPU tensor fails exactly as under NCCL ("No backend
   type associated with device type cpu"). `torch.Tensor.backward` is a no-op in this pass and the
   model is not wrapped (DDP's C++ reducer and FSDP2 ask the CUDA driver for the current device);
   the wrappers' own collectives are issued and counted by pass 2.
2. memory: two steps (the second is the steady state, AdamW's moments alive through its backward) on
   fake CPU tensors with a CPU-bound fake group ("cpu:fake"), wrapped as the job wraps (DDP or FSDP2),
   forward, backward and optimizer step, measured by torch.distributed._tools.mem_tracker.MemTracker.
   CPU autocast casts the same matmuls to bf16 as CUDA autocast.

What is patched is torch's, never the library's: DDP's cross-rank shape check and bucket rebuild
(they read parameter data, which fake tensors have none of), FSDP2's default mesh (built before the
fake mode), gradient hooks on frozen parameters (MemTracker's), DDP's communication hook (a Python
all-reduce: the fake backend's future carries no tensor). Data-dependent reads of the batch (label
counts, boolean gathers) are answered from the real batch (`RealBatch`).

The plan: INTERLACE windows over fixed pseudo-random scores (seed 0; the real scores need weights),
DeepStack layers protected as the spec says; the micro-batch is the worst case the job's estimate
assumes: perDeviceBatchSize rows of maxLength tokens, every token labelled.

Exit status 0 when both passes run and the job's estimate (interlace.runtime.placement.finetune_memory)
is at least the simulated peak; 1 otherwise. An estimate more than 15% above the peak is reported
(the job would reserve more than it needs) without failing: at tiny sizes what the estimate leaves
out is small in bytes but large in share.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

GIB = 2**30


def model_entry(source: str, *, tiny: bool) -> dict[str, Any]:
    """The bench/gpu.py config entry of a spec.model.source (Qwen/Qwen3-VL-8B-Instruct -> Qwen3-VL-8B)."""
    from gpu import MODELS, TINY_MODELS

    for name in MODELS:
        if name.lower() in source.lower():
            return TINY_MODELS[f"tiny-{name.split('-')[-1]}-shape"] if tiny else MODELS[name]
    raise SystemExit(f"rehearse: no transcribed config for spec.model.source {source!r} (bench/gpu.py MODELS)")


def make_plan(spec: Any, num_layers: int, deepstack: list[int]) -> Any:
    from interlace.schema.spec import LayerPlan
    from interlace.stages.analyze.scores import LayerScores
    from interlace.stages.plan import interlace_layers, n_drop_for_ratio, protected_layers

    rng = random.Random(0)
    scores = LayerScores(num_layers, {k: [rng.random() for _ in range(num_layers - k)] for k in (1, 2, 3)})
    n_drop = n_drop_for_ratio(num_layers, float(spec.pruning.ratio))
    protected = protected_layers(spec.pruning, None, num_layers=num_layers)
    if str(spec.pruning.deepstack_policy) in ("protect", "DeepstackPolicy.PROTECT"):
        protected = sorted(set(protected) | set(deepstack))
    drop, tune, anchor = interlace_layers(scores, n_drop=n_drop, protected=protected)
    taken = set(drop) | set(tune) | set(anchor)
    return LayerPlan(
        num_layers=num_layers, strategy="interlace", ratio=float(spec.pruning.ratio), drop=drop,
        finetune=tune, anchor=anchor, frozen=[i for i in range(num_layers) if i not in taken],
    )


class RealBatch:
    """A dispatch mode inside FakeTensorMode that keeps the batch real: the library reads label counts
    with .item() and gathers the labelled tokens with a boolean mask, both data-dependent, which fake
    tensors cannot answer. Ops whose tensors are all real (or copies of real CPU tensors moved to the
    fake device, whose real value is kept beside them) also run for real on the CPU; a boolean index
    with a known mask becomes the integer index it stands for. The model's tensors stay fake."""

    def __enter__(self) -> RealBatch:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                return outer.dispatch(func, args, kwargs or {})

        self.shadow: dict[int, Any] = {}
        self.keep: list[Any] = []
        self.mode = _Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)

    def dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        import torch
        from torch._subclasses.fake_tensor import (
            DynamicOutputShapeException,
            FakeTensor,
            unset_fake_temporarily,
        )
        from torch.utils._pytree import tree_flatten, tree_map

        def real_of(x: Any) -> Any:
            if isinstance(x, FakeTensor):
                return self.shadow.get(id(x))
            return x

        if getattr(func, "namespace", None) in ("c10d", "_c10d_functional", "c10d_functional"):
            # A collective reaches the process group on a tensor of the device the library chose:
            # a fake accelerator tensor as it is (the fake group accepts it), a CPU tensor (fake or
            # not) as a real CPU tensor, so that the group's own device dispatch refuses it on a
            # CUDA-only group exactly as NCCL's does. Never on a CPU shadow of an accelerator tensor.
            # (Ranks are symmetric; a shadow keeps this rank's value, which only scales logged losses.)
            flat, _ = tree_flatten((args, kwargs))
            if all(x.device.type != "cpu" for x in flat if isinstance(x, torch.Tensor)):
                return func(*args, **kwargs)

            def real_cpu(x: Any) -> Any:
                if isinstance(x, FakeTensor):
                    shadow = real_of(x)
                    with unset_fake_temporarily():
                        return shadow if shadow is not None else torch.zeros(x.shape, dtype=x.dtype)
                return x

            r_args, r_kwargs = tree_map(real_cpu, (args, kwargs))
            with unset_fake_temporarily():
                return func(*r_args, **r_kwargs)
        flat, _ = tree_flatten((args, kwargs))
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        known = all(real_of(x) is not None for x in tensors)
        if known and tensors:
            r_args, r_kwargs = tree_map(real_of, (args, kwargs))
            target = r_kwargs.get("device")
            if target is not None and torch.device(target).type != "cpu":
                r_kwargs = {**r_kwargs, "device": torch.device("cpu")}
            with unset_fake_temporarily():
                real_out = func(*r_args, **r_kwargs)
            if not any(isinstance(x, FakeTensor) for x in tensors) and (
                target is None or torch.device(target).type == "cpu"
            ):
                return real_out  # a plain CPU op on the batch
            if func is torch.ops.aten._local_scalar_dense.default:
                return real_out  # .item() of a tensor whose real value is known (the label counts)
            try:
                out = func(*args, **kwargs)  # the fake value on the fake device, real value kept beside
            except DynamicOutputShapeException:  # e.g. a boolean-mask gather: its shape is the real one
                fake_in = next(x for x in tensors if isinstance(x, FakeTensor))
                out = fake_in.fake_mode.from_tensor(real_out).to(fake_in.device)
            if isinstance(out, FakeTensor) and isinstance(real_out, torch.Tensor):
                self.shadow[id(out)] = real_out
                self.keep.append(out)
            return out
        if func is torch.ops.aten._local_scalar_dense.default:
            # A value read from the model's fake tensors (the logged loss, AdamW's step count): a fake
            # tensor has none, and nothing the rehearsal measures depends on it.
            return False if args[0].dtype == torch.bool else 1 if not args[0].is_floating_point() else 1.0
        if func is torch.ops.aten.index.Tensor:
            src, idx = args[0], list(args[1])
            new: list[Any] = []
            for i in idx:
                r = real_of(i) if i is not None else None
                if r is not None and r.dtype == torch.bool:
                    with unset_fake_temporarily():
                        parts = r.nonzero(as_tuple=True)
                    for part in parts:
                        if isinstance(src, FakeTensor):  # a fake copy on the source's device, real value beside
                            fake = src.fake_mode.from_tensor(part).to(src.device)
                            self.shadow[id(fake)] = part
                            self.keep.append(fake)
                            new.append(fake)
                        else:
                            new.append(part)
                else:
                    new.append(i)
            return func(src, new, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_friendly_ddp() -> Iterator[None]:
    """DDP's constructor compares parameter shapes across ranks by reading their data, which fake
    tensors have none of; the ranks here are symmetric, so that check is skipped (torch's, not ours)."""
    import torch.nn.parallel.distributed as ddp

    orig = ddp._verify_param_shape_across_processes
    ddp._verify_param_shape_across_processes = lambda *a, **k: None
    try:
        yield
    finally:
        ddp._verify_param_shape_across_processes = orig


def _real_device_mesh(device_type: str, world: int) -> Any:
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    # DeviceMesh, not init_device_mesh: the latter also binds the rank to a CUDA device.
    return DeviceMesh(device_type, torch.arange(world))


@contextlib.contextmanager
def default_mesh(mesh: Any) -> Iterator[None]:
    """fully_shard without a mesh argument (as the library calls it) gets `mesh` as its default."""
    if mesh is None:
        yield
        return
    from torch.distributed.fsdp._fully_shard import _fully_shard

    orig = _fully_shard._init_default_mesh
    _fully_shard._init_default_mesh = lambda: mesh
    try:
        yield
    finally:
        _fully_shard._init_default_mesh = orig


@contextlib.contextmanager
def hooks_on_frozen_params() -> Iterator[None]:
    """MemTracker registers a gradient hook on every parameter of a module, which torch refuses for
    frozen ones (most of ours); a frozen parameter never gets a gradient, so a no-op handle stands in."""
    import torch
    from torch.utils.hooks import RemovableHandle

    orig = torch.Tensor.register_hook
    none: collections.OrderedDict[int, Any] = collections.OrderedDict()  # weak-referencable

    def register_hook(self: Any, hook: Any) -> Any:
        if not self.requires_grad:
            return RemovableHandle(none)
        return orig(self, hook)

    orig_post = torch.Tensor.register_post_accumulate_grad_hook

    def register_post(self: Any, hook: Any) -> Any:
        if not self.requires_grad:
            return RemovableHandle(none)
        return orig_post(self, hook)

    torch.Tensor.register_hook = register_hook  # type: ignore[method-assign]
    torch.Tensor.register_post_accumulate_grad_hook = register_post  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.register_hook = orig  # type: ignore[method-assign]
        torch.Tensor.register_post_accumulate_grad_hook = orig_post  # type: ignore[method-assign]


class _NoBucketRebuild:
    """DDP's reducer, except that the second step keeps the first step's buckets: rebuilding them in
    gradient-ready order (C++) reads the fake parameters' data. The buckets hold the same gradients
    either way, so the memory measured is the same; torch's object, not ours, is what is wrapped."""

    def __init__(self, reducer: Any) -> None:
        self._reducer = reducer

    def _rebuild_buckets(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)


def allreduce_hook(state: Any, bucket: Any) -> Any:
    """DDP's default hook (all-reduce the bucket, divide by the world) as a Python hook: the fake
    backend's future carries no tensor, which DDP's built-in C++ hook asserts on."""
    import torch
    import torch.distributed as dist

    buf = bucket.buffer()
    dist.all_reduce(buf)
    buf.div_(dist.get_world_size())
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buf)
    return fut


@contextlib.contextmanager
def no_backward() -> Iterator[None]:
    import torch

    orig = torch.Tensor.backward
    torch.Tensor.backward = lambda self, *a, **k: None  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.backward = orig  # type: ignore[method-assign]


def simulate(spec: Any, entry: dict[str, Any], *, world: int, device_type: str, tiny: bool,
             measure: bool) -> dict[str, Any]:
    """One optimizer step of rank 0 of `world` (see the module docstring). Returns what it found."""
    import torch
    import torch.distributed as dist
    from gpu import qwen3_vl_config
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import Qwen3VLForConditionalGeneration, get_scheduler

    from interlace.models.load import find_parts
    from interlace.stages.finetune.freeze import prepare_student
    from interlace.stages.finetune.step import _wrap, accumulate_gradients, apply_gradients
    from interlace.stages.prune import prune_model

    ft = spec.finetune
    precision = str(ft.precision)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "auto":
        amp_dtype = torch.bfloat16
    load_dtype = torch.float32 if amp_dtype is None else torch.bfloat16
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    config = qwen3_vl_config(entry, tiny=tiny)
    out: dict[str, Any] = {"world": world, "device": device_type, "ok": False}
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group(f"{device_type}:fake", store=FakeStore(), rank=0, world_size=world)
    comm = CommDebugMode()
    # FSDP2 builds its default device mesh (a rank layout) from tensors: made here, before the fake
    # mode, and handed to fully_shard in place of the one it would build under fake tensors.
    mesh = _real_device_mesh(device_type, world) if ft.parallelism == "fsdp" else None
    # The batch is real (the library counts its labels with .item()); with propagate_real_tensors the
    # fake mode keeps those real values, so data-dependent shapes (the labelled-token gather) resolve.
    B, T = ft.per_device_batch_size, ft.max_length
    vocab = int(config.text_config.vocab_size)
    ids = torch.randint(0, min(vocab - 4, 151000), (B, T), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    group = [(batch, B * T)]  # one micro-batch: accumulation repeats it, the peak is the same
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), RealBatch():
            with torch.device(device):
                model = Qwen3VLForConditionalGeneration._from_config(
                    config, dtype=load_dtype, attn_implementation="sdpa"
                )
                teacher = None
                if ft.distillation is not None and ft.distillation.top_k is None:
                    teacher = Qwen3VLForConditionalGeneration._from_config(
                        config, dtype=load_dtype, attn_implementation="sdpa"
                    ).eval()
                    teacher.requires_grad_(False)
            parts = find_parts(model)
            plan = make_plan(spec, len(parts.layers), list(parts.deepstack_layers))
            prune_model(model, plan, deepstack_policy=str(spec.pruning.deepstack_policy))
            summary = prepare_student(model, plan, freeze_lm_head=spec.pruning.freeze_lm_head,
                                      gradient_checkpointing=ft.gradient_checkpointing)
            out["plan"] = {"drop": plan.drop, "finetune": plan.finetune, "positions": summary.positions}
            weights = {
                "frozen": sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad),
                "trainable": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
                "teacher": sum(p.numel() * p.element_size() for p in teacher.parameters()) if teacher else 0,
            }
            if measure:
                with fake_friendly_ddp(), default_mesh(mesh):
                    wrapped = _wrap(model, ft.parallelism, device, amp_dtype, world)
            else:
                # DDP's reducer (C++) asks the CUDA driver for the device at every forward
                # (prepare_for_forward), FSDP2 for the current CUDA device and its streams: no machine
                # without a GPU answers either. Pass 1 checks the library's own collectives, so it
                # runs the step on the unwrapped model; the wrappers' collectives (DDP's buckets,
                # FSDP2's all-gathers and reduce-scatters, on the parameters' own device) are issued,
                # and counted, by pass 2.
                wrapped = model
            if hasattr(wrapped, "reducer"):
                wrapped.reducer = _NoBucketRebuild(wrapped.reducer)
            if hasattr(wrapped, "register_comm_hook"):
                allreduce_hook.__annotations__ = {  # DDP checks them; this module's are strings
                    "state": object, "bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
                wrapped.register_comm_hook(None, allreduce_hook)
            trainable = [p for p in wrapped.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=ft.learning_rate, weight_decay=ft.weight_decay)
            scheduler = get_scheduler(ft.lr_scheduler, optimizer, num_warmup_steps=1, num_training_steps=10)
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
            tracker = MemTracker() if measure else None
            if tracker is not None:
                tracker.track_external(wrapped, optimizer)
                if teacher is not None:
                    tracker.track_external(teacher)
            t0 = time.perf_counter()
            with hooks_on_frozen_params(), (tracker if tracker is not None else contextlib.nullcontext()), comm, (
                no_backward() if not measure else contextlib.nullcontext()
            ):
                # Two steps: the first creates AdamW's moments in its optimizer step, the second is
                # the steady state every later step repeats (the moments live through its backward).
                for _ in range(2 if measure else 1):
                    if tracker is not None:
                        tracker.reset_mod_stats()  # per-module stats per iteration; the peak stays
                    accumulate_gradients(
                        wrapped, group, device=device, amp_dtype=amp_dtype, world=world, scaler=scaler,
                        teacher=teacher, distillation=ft.distillation,
                    )
                    apply_gradients(trainable, optimizer, scheduler, scaler, max_grad_norm=ft.max_grad_norm)
            out["step_s"] = time.perf_counter() - t0
            if tracker is not None:
                peak = tracker.get_tracker_snapshot("peak")
                dev = next(d for d in peak if torch.device(d).type == device.type)
                out["peak"] = {str(k).split(".")[-1].lower(): v for k, v in peak[dev].items()}
            out["weights"] = weights
        out["ok"] = True
    except Exception as err:  # the rehearsal reports the failure, it does not hide it
        out["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
        out["traceback"] = traceback.format_exc()
    finally:
        out["collectives"] = {str(k): v for k, v in comm.get_comm_counts().items()}
        dist.destroy_process_group()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--file", required=True, help="a PruneJob YAML")
    ap.add_argument("--world", type=int, default=None, help="ranks (default: the spec's workers x gpusPerWorker)")
    ap.add_argument("--tiny", action="store_true", help="the tiny configs of bench/gpu.py (CI)")
    ap.add_argument("--parallelism", choices=("ddp", "fsdp"), help="override spec.finetune.parallelism")
    ap.add_argument("--max-length", type=int, help="override spec.finetune.maxLength (CI: a short one)")
    args = ap.parse_args(argv)

    from interlace.runtime.placement import finetune_memory, placement_of
    from interlace.schema.spec import load_prunejob

    job = load_prunejob(args.file)
    spec = job.spec
    if args.parallelism:
        spec = spec.model_copy(update={"finetune": spec.finetune.model_copy(update={"parallelism": args.parallelism})})
    if args.max_length:
        spec = spec.model_copy(update={"finetune": spec.finetune.model_copy(update={"max_length": args.max_length})})
    world = args.world or max(1, placement_of(spec.resources.workers, spec.resources.gpus_per_worker).num_workers)
    if args.world:
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(
            update={"workers": world, "gpus_per_worker": 1})})
    entry = model_entry(spec.model.source, tiny=args.tiny)
    ft = spec.finetune
    print(f"rehearsal of {args.file}: {spec.model.source}{' (tiny config)' if args.tiny else ''}, world {world}, "
          f"{ft.parallelism}, micro-batch {ft.per_device_batch_size} x {ft.max_length}, precision {ft.precision}, "
          f"checkpointing {ft.gradient_checkpointing}, distillation {ft.distillation is not None}")
    t0 = time.perf_counter()

    def run_pass(label: str, device_type: str, measure: bool) -> dict[str, Any]:
        result = simulate(spec, entry, world=world, device_type=device_type, tiny=args.tiny, measure=measure)
        print(f"{label}: {'ok' if result['ok'] else 'FAILED'}; collectives issued {result['collectives']}")
        if not result["ok"]:
            print("    " + result["error"])
            print("    " + "\n    ".join(result["traceback"].strip().splitlines()[-int(__import__("os").environ.get("REHEARSE_TB", "40")):]))
        return result

    coll = run_pass("[1] collectives on a CUDA-only fake group (fake CUDA tensors, no backward)", "cuda", False)
    mem = run_pass("[2] memory, two full steps on fake CPU tensors (the second is the steady state)", "cpu", True)
    failed = not (coll["ok"] and mem["ok"])
    if mem["ok"]:
        from gpu import qwen3_vl_config

        peak = mem["peak"]
        total = float(peak.get("total", sum(peak.values())))
        est = finetune_memory(spec, qwen3_vl_config(entry, tiny=args.tiny), positions=mem["plan"]["positions"])
        w = mem["weights"]
        print(f"    plan: drop {mem['plan']['drop']}, finetune {mem['plan']['finetune']} "
              f"(positions {mem['plan']['positions']})")
        print(f"    rank 0..{world - 1} (symmetric), simulated peak {total / GIB:.2f} GiB: "
              + ", ".join(f"{k} {v / GIB:.2f}" for k, v in peak.items() if k != "total"))
        print(f"    unsharded weights: frozen {w['frozen'] / GIB:.2f}, trainable {w['trainable'] / GIB:.2f}, "
              f"teacher {w['teacher'] / GIB:.2f} GiB")
        ratio = est.total / total if total else float("inf")
        print(f"    estimate (interlace.runtime.costs): {est.describe()}; estimate / simulated = {ratio:.3f}")
        if est.total < total:
            failed = True
            print("    the estimate is BELOW the simulated peak")
        elif ratio > 1.15:
            print("    the estimate is more than 15% above the simulated peak (the job would over-reserve)")
    print(f"verdict: {'FAIL' if failed else 'PASS'} ({time.perf_counter() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
