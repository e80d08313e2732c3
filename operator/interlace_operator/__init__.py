"""The kopf operator for PruneJobs, installed as the package `interlace_operator`.

It never imports torch, transformers or ray (an import-linter contract in pyproject.toml checks it).
"""
