"""INTERLACE layer pruning for vision-language models (arXiv 2511.19676).

The package is layered: `interlace.schema.spec` (pydantic only) is shared with the operator; everything
that needs torch, transformers or ray is imported lazily by the modules that use it.

The Python API (interlace.api) is importable from here; `import interlace` itself imports nothing
(the names below load on first use):

    import interlace
    result = interlace.prune("builtin:smollm2-135m", ratio=0.2, data="builtin:english", output="out")
    result = interlace.run("prunejob.yaml")
    from interlace import analyze, plan, prune, finetune, evaluate, validate
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("analyze", "plan", "prune", "finetune", "evaluate", "run", "sweep", "validate", "load_job", "PruneResult")
_SPEC = ("PruneJob", "PruneJobSpec", "LayerPlan", "Results", "SpecError")


def __getattr__(name: str) -> Any:
    if name in _API:
        from interlace import api

        return getattr(api, name)
    if name in _SPEC:
        from interlace.schema import spec

        return getattr(spec, name)
    if name == "InterlaceError":
        from interlace.errors import InterlaceError

        return InterlaceError
    raise AttributeError(f"module 'interlace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_SPEC, "InterlaceError"])


__all__ = [*_API, *_SPEC, "InterlaceError", "__version__"]
