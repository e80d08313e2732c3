"""Benchmark harnesses (lmms-eval, VLMEvalKit): an honest adapter.

The paper evaluates with VLMEvalKit on 12 benchmarks. Either harness would be the right tool for the
full benchmark families, but neither fits this environment:

* ``lmms-eval==0.7.3`` (checked with ``uv pip install --dry-run`` against torch 2.14.1 /
  transformers 5.23.0) pulls 71 more packages and DOWNGRADES ``protobuf`` and
  ``antlr4-python3-runtime``, which Ray and other installed packages pin; installing it would break the
  runtime venv.
* VLMEvalKit is not published as an installable package with pinned dependencies (it is a git checkout
  with a requirements file that pins its own torch/transformers).
* Both download their benchmark data from the Hugging Face Hub, which the job may not reach.

So ``lmms-eval:<task>`` and ``vlmevalkit:<task>`` benchmarks are recognised and rejected up front (before
any GPU time) with a message that says why and what to use instead: the built-in VQA evaluator on a
local export of the benchmark (see docs/evaluation.md for the format).
"""

from __future__ import annotations

import importlib.util

from interlace.errors import InterlaceError

PREFIXES = ("lmms-eval:", "vlmevalkit:")
_MODULES = {"lmms-eval:": "lmms_eval", "vlmevalkit:": "vlmeval"}


def is_harness_benchmark(name: str) -> bool:
    return name.startswith(PREFIXES)


def check_harness(name: str, *, where: str = "spec.evaluation.benchmarks") -> None:
    """Raise InterlaceError for a harness benchmark: the harness is not available in this runtime."""
    prefix = next(p for p in PREFIXES if name.startswith(p))
    module = _MODULES[prefix]
    installed = importlib.util.find_spec(module) is not None
    state = (
        f"{module} is installed but this build has no adapter for it"
        if installed
        else f"the optional harness {prefix[:-1]} is not installed in this runtime (it conflicts with the "
        "pinned protobuf/antlr4 of the ML extra)"
    )
    raise InterlaceError(
        f"{where}: {name!r}: {state}; export the benchmark to the built-in VQA format "
        "(parquet/jsonl with image, question, choices, answer) and list its path instead"
    )
