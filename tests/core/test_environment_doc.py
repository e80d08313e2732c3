"""docs/environment.md lists every environment variable the library and the operator read, with the code's defaults."""

from __future__ import annotations

import re
from pathlib import Path

from interlace_operator.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]
# A string literal that names an environment variable (the code reads them through os.environ.get,
# env.get, _float(env, ...) and *_ENV constants; the names all use these prefixes).
ENV_NAME = re.compile(
    r"[\"']((?:INTERLACE|HF|HUGGING_FACE|HUGGINGFACE|AWS|RAY|KUBERNETES|POD|TRANSFORMERS)_[A-Z0-9_]*[A-Z0-9]|KUBECONFIG)[\"']"
)


def _names_in_code() -> set[str]:
    names: set[str] = set()
    for root in (REPO / "interlace", REPO / "operator" / "interlace_operator"):
        for f in root.rglob("*.py"):
            names |= set(ENV_NAME.findall(f.read_text()))
    return names


def test_every_variable_is_in_the_table() -> None:
    doc = (REPO / "docs" / "environment.md").read_text()
    names = _names_in_code()
    assert {"INTERLACE_WORKERS", "INTERLACE_PRUNEJOB", "HF_HUB_OFFLINE", "RAY_ADDRESS"} <= names  # the scan works
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"read by the code but not in docs/environment.md: {missing}"


def test_operator_defaults_match_the_table() -> None:
    doc = (REPO / "docs" / "environment.md").read_text()
    defaults = OperatorConfig.from_env({})
    rows = {m[0]: m[1].strip() for m in re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", doc, re.MULTILINE)}
    assert rows["INTERLACE_WORKERS"] == str(defaults.workers)
    assert rows["INTERLACE_HEALTH_PORT"] == str(defaults.health_port)
    assert rows["INTERLACE_METRICS_PORT"] == str(defaults.metrics_port)
    assert rows["INTERLACE_RETRY_BACKOFF_SECONDS"] == f"{defaults.retry_backoff_seconds:g}"
    assert rows["INTERLACE_RETRY_BACKOFF_MAX_SECONDS"] == f"{defaults.retry_backoff_max_seconds:g}"
    assert rows["INTERLACE_WATCH_TIMEOUT_SECONDS"] == f"{defaults.watch_timeout_seconds:g}"
    assert rows["INTERLACE_KUBERAY_RETRY_SECONDS"] == f"{defaults.kuberay_retry_seconds:g}"
    assert rows["INTERLACE_LEASE_DURATION_SECONDS"] == f"{defaults.lease_duration_seconds:g}"
    assert rows["INTERLACE_RUNTIME_IMAGE"] == f"`{defaults.runtime_image}`"
