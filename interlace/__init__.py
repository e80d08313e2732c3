"""INTERLACE layer pruning for vision-language models (arXiv 2511.19676).

The package is layered: `interlace.spec` (pydantic only) is shared with the operator; everything
that needs torch, transformers or ray is imported lazily by the modules that use it.
"""

__version__ = "0.1.0"
