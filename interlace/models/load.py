"""Model adapters: load a model and find its parts (decoder layers, embeddings, norm, head, vision).

transformers 5 removed the shortcut properties (`model.language_model`, `model.visual` on the
top-level classes), and the nesting differs per family, so parts are found by walking the module
tree: the decoder stack is the one module that owns both an `embed_tokens` embedding and a `layers`
ModuleList. Only families we test are accepted; anything else is a clear `InterlaceError`.

Supported families (config.model_type): qwen3_vl, qwen2_5_vl, qwen2_vl, llava (any supported text
backbone), llama, qwen2, qwen3, mistral.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlace.errors import InterlaceError, TransientError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

VLM_FAMILIES: tuple[str, ...] = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "llava")
TEXT_FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral")
SUPPORTED_FAMILIES: tuple[str, ...] = VLM_FAMILIES + TEXT_FAMILIES

_VISION_NAMES = ("visual", "vision_tower", "vision_model")
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector")


def _supported_text() -> str:
    return ", ".join(SUPPORTED_FAMILIES)


def unsupported(cls_name: str, model_type: str | None) -> InterlaceError:
    mt = f" (model_type {model_type!r})" if model_type else ""
    return InterlaceError(f"unsupported architecture {cls_name}{mt}; supported families: {_supported_text()}")


@dataclass
class ModelParts:
    """Where things live inside one loaded model. All entries are the model's own modules."""

    family: str
    layers: nn.ModuleList
    layers_owner: nn.Module  # the decoder stack (e.g. Qwen3VLTextModel / LlamaModel)
    embed_tokens: nn.Module
    norm: nn.Module | None
    lm_head: nn.Module | None
    vision: nn.Module | None
    projector: nn.Module | None
    text_config: Any
    deepstack_layers: list[int] = field(default_factory=list)
    is_multimodal: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass
class LoadedModel:
    model: Any
    processor: Any  # a ProcessorMixin for VLMs, a tokenizer for text models
    parts: ModelParts
    source: str = ""
    path: Path | None = None  # the local directory the weights came from, when known
    processor_error: str | None = None  # why processor is None (load_model(processor_optional=True))


def _model_type(model: Any) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None)


def find_parts(model: Any) -> ModelParts:
    """Locate the parts of a supported model by walking its module tree."""
    from torch import nn

    cls_name = type(model).__name__
    family = _model_type(model)
    if family not in SUPPORTED_FAMILIES:
        raise unsupported(cls_name, family)

    stacks = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "layers", None), nn.ModuleList)
        and isinstance(getattr(m, "embed_tokens", None), nn.Embedding)
    ]
    if len(stacks) != 1:
        found = ", ".join(n or "<root>" for n, _ in stacks) or "none"
        raise InterlaceError(
            f"{cls_name}: expected exactly one decoder stack (a module with embed_tokens and layers), "
            f"found {found}; supported families: {_supported_text()}"
        )
    _, owner = stacks[0]
    layers = owner.layers
    if len(layers) == 0:
        raise InterlaceError(f"{cls_name}: the decoder has no layers")

    lm_head = getattr(model, "lm_head", None)
    if lm_head is None and hasattr(model, "get_output_embeddings"):
        lm_head = model.get_output_embeddings()

    vision = projector = None
    for name, m in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if vision is None and leaf in _VISION_NAMES:
            vision = m
        if projector is None and leaf in _PROJECTOR_NAMES:
            projector = m
    if projector is None and vision is not None:
        projector = getattr(vision, "merger", None)  # Qwen-VL: the patch merger is the projector
    is_mm = family in VLM_FAMILIES
    if is_mm and vision is None:
        raise InterlaceError(f"{cls_name}: no vision tower found (looked for {', '.join(_VISION_NAMES)})")

    cfg = model.config
    text_config = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    deepstack: list[int] = []
    vcfg = getattr(cfg, "vision_config", None)
    idx = getattr(vcfg, "deepstack_visual_indexes", None) if vcfg is not None else None
    if idx:
        # Qwen3VLTextModel adds deepstack feature j after decoder layer j (by list position).
        deepstack = list(range(min(len(idx), len(layers))))

    return ModelParts(
        family=family,
        layers=layers,
        layers_owner=owner,
        embed_tokens=owner.embed_tokens,
        norm=getattr(owner, "norm", None),
        lm_head=lm_head,
        vision=vision,
        projector=projector,
        text_config=text_config,
        deepstack_layers=deepstack,
        is_multimodal=is_mm,
    )


# ------------------------------------------------------------------------------------------ loading

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "file:"))
        or source in (".", "..")
        or "\\" in source
        or source.count("/") > 1
    )


def resolve_source(source: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local_dir). Raises InterlaceError for bad sources."""
    if not isinstance(source, str) or not source.strip():
        raise InterlaceError("model source is empty; pass a model directory, a hub id or builtin:<name>")
    source = source.strip()
    if source.startswith("builtin:"):
        from interlace import builtin  # the data engineer's module; imported only when needed

        path = Path(builtin.resolve_source(source))
        return _check_dir(path, source), True
    if source.startswith("file://"):
        source = source[len("file://") :]
    p = Path(source).expanduser()
    if p.exists():
        return _check_dir(p, source), True
    if _looks_like_path(source):
        raise InterlaceError(f"model directory {source} does not exist")
    if not _HUB_ID.match(source) or ".." in source or "--" in source or source.endswith((".", "-")):
        raise InterlaceError(
            f"model {source!r} is neither an existing directory nor a valid hub id (org/name)"
        )
    if _offline():
        # Answer from the local cache alone, before transformers/torch are even imported.
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise InterlaceError(
                f"model {source!r} is not a local directory and not in the hub cache, and HF_HUB_OFFLINE=1 "
                "forbids downloading it; download it first or pass a local directory"
            )
    return source, False


def _offline() -> bool:
    from interlace.settings import settings  # lazily: this module imports without pydantic (bench/gpu.py)

    return settings().offline


def _check_dir(p: Path, source: str) -> str:
    if not p.is_dir():
        raise InterlaceError(f"model source {source} is a file, not a model directory")
    if not (p / "config.json").is_file():
        raise InterlaceError(f"model directory {source} has no config.json (not a Hugging Face checkpoint)")
    return str(p)


def resolve_dtype(dtype: str | Any, device: str) -> torch.dtype:
    """auto = bfloat16 on CUDA, float32 on CPU (bf16 matmuls on CPU are slow and inexact);
    checkpoint = whatever the checkpoint stores (for surgery, which should not change the dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "checkpoint":
        return "auto"  # type: ignore[return-value]  # from_pretrained: the dtype stored in the checkpoint
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if dtype not in table:
        raise InterlaceError(f"dtype {dtype!r} is not one of auto, checkpoint, bfloat16, float16, float32")
    return table[dtype]


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InterlaceError(f"device {device} requested but CUDA is not available")
    return str(device)


def _hub_error(source: str, err: BaseException) -> InterlaceError:
    """What a failed hub load means: the model (or its revision, a file, access to a gated repo) is not
    there, which no retry changes; offline without a cached copy, the same; anything else (the
    network, rate limits, a server error) is a TransientError, retried."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if offline:
        return InterlaceError(
            f"model {source!r} is not a local directory and not in the hub cache, and HF_HUB_OFFLINE=1 "
            f"forbids downloading it ({first})"
        )
    chain = [err, err.__cause__, err.__context__]
    if any(isinstance(e, GatedRepoError) for e in chain):
        return InterlaceError(
            f"spec.model.source: {source!r} is gated and the token has no access ({first}); accept its terms "
            "on the Hub and name a Secret with that account's token in spec.model.hfTokenSecret"
        )
    if any(isinstance(e, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError) for e in chain):
        return InterlaceError(
            f"spec.model.source: {source!r} is not on the Hub (at spec.model.revision, if set), or is private "
            f"and the token cannot see it ({first}); check the id, spec.model.revision and spec.model.hfTokenSecret"
        )
    return TransientError(f"cannot load model {source!r} from the hub: {first}")



def load_config(source: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's config, with a clear error when it cannot be found or is unsupported."""
    target, local = resolve_source(source)
    return _load_config(source, target, local, revision=revision, trust_remote_code=trust_remote_code)


def _load_config(
    source: str, target: str, local: bool, *, revision: str | None, trust_remote_code: bool
) -> Any:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(target, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        if local:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InterlaceError(f"model directory {source}: cannot read config.json: {first}") from None
        raise _hub_error(source, err) from None
    except Exception as err:  # network stacks raise their own types (httpx, requests)
        if local:
            raise
        raise _hub_error(source, err) from None
    if cfg.model_type not in SUPPORTED_FAMILIES:
        archs = getattr(cfg, "architectures", None) or [type(cfg).__name__]
        raise unsupported(archs[0], cfg.model_type)
    return cfg


def load_model(
    source: str,
    *,
    dtype: str | Any = "auto",
    device: str = "cpu",
    attn_implementation: str | None = "sdpa",
    revision: str | None = None,
    trust_remote_code: bool = False,
    processor_optional: bool = False,
    empty: bool = False,
) -> LoadedModel:
    """Load model + processor (VLM) or tokenizer (text) from a directory, a hub id or builtin:<name>.

    VLMs load through AutoModelForImageTextToText and AutoProcessor, text models through
    AutoModelForCausalLM and AutoTokenizer. The model is in eval mode on `device`.
    With `processor_optional` (surgery needs only the weights), a checkpoint without processor or
    tokenizer files (e.g. a training checkpoint) loads with `processor=None` and the reason in
    `processor_error`.
    With `empty`, no weights are read: the model is built from its config with every parameter on
    the meta device (a shape and dtype, no storage) and its buffers computed for real on the CPU
    (the rotary embedding's inv_freq is not in the checkpoint); `device` is ignored. FSDP2 shards
    such a model before anything is allocated, see interlace.stages.finetune.shard.
    """
    target, local = resolve_source(source)  # bad sources fail here, before the heavy imports
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    cfg = _load_config(source, target, local, revision=revision, trust_remote_code=trust_remote_code)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    is_vlm = cfg.model_type in VLM_FAMILIES
    model_cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    kwargs: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": torch_dtype,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    processor_error: str | None = None
    try:
        if not empty:
            model = model_cls.from_pretrained(target, config=cfg, **kwargs)
        else:
            from accelerate import init_empty_weights  # type: ignore[import-untyped]

            with init_empty_weights(include_buffers=False):
                del kwargs["revision"]  # the config is already read
                model = model_cls.from_config(cfg, **kwargs)
            model.tie_weights()  # init_empty_weights re-creates every assigned parameter: tie again
        proc_cls = AutoProcessor if is_vlm else AutoTokenizer
        try:
            processor = proc_cls.from_pretrained(target, revision=revision, trust_remote_code=trust_remote_code)
        except Exception as err:
            if not processor_optional:
                raise
            processor = None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            processor_error = f"{type(err).__name__}: {first}"
    except OSError as err:
        if local:
            first = str(err).strip().splitlines()[0]
            raise InterlaceError(f"model directory {source}: {first}") from None
        raise _hub_error(source, err) from None
    if not empty:
        model.to(dev)  # type: ignore[arg-type]  # transformers' wrapper of .to() mistypes its argument
    model.eval()
    parts = find_parts(model)
    return LoadedModel(
        model=model,
        processor=processor,
        parts=parts,
        source=source,
        path=Path(target) if local else None,
        processor_error=processor_error,
    )
