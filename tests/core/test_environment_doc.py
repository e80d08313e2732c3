"""docs/environment.md lists every environment variable the library and the operator read, with the
code's defaults; the code reads them in one place each (two pydantic-settings classes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from interlace_operator.config import OperatorConfig, env_names

from interlace.errors import InterlaceError
from interlace.settings import Settings, settings

REPO = Path(__file__).resolve().parents[2]
# Reading the environment directly is allowed only here: the two settings classes, the `env:NAME`
# file argument (the variable is named by the user: `interlace run -f env:INTERLACE_PRUNEJOB_SPEC`),
# and Ray's own variable that ray_cluster.py sets (a write, with setdefault).
ALLOWED = {
    "interlace/settings.py", "operator/interlace_operator/config.py",
    "interlace/schema/spec.py", "interlace/runtime/ray_cluster.py",
}
READ = re.compile(r"os\.environ\b|os\.getenv\b|\benviron\.get\(")


def _doc_rows() -> dict[str, str]:
    doc = (REPO / "docs" / "environment.md").read_text()
    rows: dict[str, str] = {}
    for names, default in re.findall(r"^\| ((?:`[A-Z0-9_]+`(?:, )?)+) \|([^|]*)\|", doc, re.MULTILINE):
        for n in re.findall(r"`([A-Z0-9_]+)`", names):
            rows[n] = default.strip()
    return rows


@pytest.mark.parametrize("cls", [Settings, OperatorConfig])
def test_every_settings_variable_is_in_the_table(cls: type) -> None:
    rows = _doc_rows()
    names = {n for f in cls.model_fields for n in env_names(cls, f)}
    assert len(names) >= 15  # the scan works
    missing = sorted(names - rows.keys())
    assert not missing, f"read by {cls.__name__} but not in docs/environment.md: {missing}"


def test_the_table_lists_nothing_the_code_does_not_read() -> None:
    code = {n for cls in (Settings, OperatorConfig) for f in cls.model_fields for n in env_names(cls, f)}
    # the spec travels in this one (read through `-f env:NAME`); the hack/ scripts' own variables
    extra = {"INTERLACE_PRUNEJOB_SPEC", "INTERLACE_TESTBED_DIR", "TESTBED_BUILD_JOBS"}
    stale = sorted(set(_doc_rows()) - code - extra)
    assert not stale, f"in docs/environment.md but read by no settings class: {stale}"


def test_no_module_reads_the_environment_itself() -> None:
    offenders = []
    for root in (REPO / "interlace", REPO / "operator" / "interlace_operator"):
        for f in root.rglob("*.py"):
            rel = str(f.relative_to(REPO))
            if rel in ALLOWED:
                continue
            for i, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if READ.search(code):
                    offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "read the environment through interlace.settings / OperatorConfig:\n" + "\n".join(offenders)


def test_operator_defaults_match_the_table() -> None:
    rows = _doc_rows()
    defaults = OperatorConfig.from_env({})
    assert rows["INTERLACE_WORKERS"] == str(defaults.workers)
    assert rows["INTERLACE_HEALTH_PORT"] == str(defaults.health_port)
    assert rows["INTERLACE_METRICS_PORT"] == str(defaults.metrics_port)
    assert rows["INTERLACE_RETRY_BACKOFF_SECONDS"] == f"{defaults.retry_backoff_seconds:g}"
    assert rows["INTERLACE_RETRY_BACKOFF_MAX_SECONDS"] == f"{defaults.retry_backoff_max_seconds:g}"
    assert rows["INTERLACE_WATCH_TIMEOUT_SECONDS"] == f"{defaults.watch_timeout_seconds:g}"
    assert rows["INTERLACE_KUBERAY_RETRY_SECONDS"] == f"{defaults.kuberay_retry_seconds:g}"
    assert rows["INTERLACE_LEASE_DURATION_SECONDS"] == f"{defaults.lease_duration_seconds:g}"
    assert rows["INTERLACE_RUNTIME_IMAGE"] == f"`{defaults.runtime_image}`"
    assert rows["INTERLACE_LOG_LEVEL"] == f"`{defaults.log_level}`"


def test_library_settings_read_the_environment_now(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path))
    monkeypatch.setenv("INTERLACE_WORK_DIR", "")  # empty = unset
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "Yes")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://b")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://a")  # the S3-specific one wins, as in botocore
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    s = settings()
    assert s.cache == tmp_path and s.work_dir is None and s.offline
    assert s.aws_endpoint_url == "http://a"
    assert "s3cr3t-value" in s.secret_values() and "s3cr3t-value" not in repr(s)
    monkeypatch.setenv("INTERLACE_STATUS_INTERVAL", "soon")
    with pytest.raises(InterlaceError, match="INTERLACE_STATUS_INTERVAL='soon'"):
        settings()


def test_operator_settings_name_the_variable_on_bad_input() -> None:
    with pytest.raises(ValueError, match="INTERLACE_WORKERS='0'"):
        OperatorConfig.from_env({"INTERLACE_WORKERS": "0"})
    with pytest.raises(ValueError, match="INTERLACE_LEASE_DURATION_SECONDS='x' is not a number"):
        OperatorConfig.from_env({"INTERLACE_LEASE_DURATION_SECONDS": "x"})
    # the Lease namespace: its own variable first, then the downward API's
    both = {"INTERLACE_LEADER_ELECTION_NAMESPACE": "ops", "POD_NAMESPACE": "here"}
    assert OperatorConfig.from_env(both).lease_namespace == "ops"
    assert OperatorConfig.from_env({"POD_NAMESPACE": "here"}).lease_namespace == "here"
