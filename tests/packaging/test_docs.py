"""The docs stay true: the CRD reference is regenerated from the schema, the operations guide covers
every phase and every condition reason the operator writes, the architecture picture names the flow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from interlace.schema.status import Phase

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_crd_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-crd-docs.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_crd_reference_covers_every_spec_field() -> None:
    import yaml

    crd = next(d for d in yaml.safe_load_all((REPO / "manifests/base/crd.yaml").read_text()) if d)
    ref = (DOCS / "crd-reference.md").read_text()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for top, sub in spec.items():
        assert f"`spec.{top}`" in ref
        for name in sub.get("properties", {}):
            assert f"`spec.{top}.{name}`" in ref


def test_crd_docs_check_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "ref.md"
    stale.write_text("# old\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-crd-docs.py"), "--check", "--out", str(stale)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "stale" in proc.stderr


def _operator_reasons() -> set[str]:
    """Condition reasons the operator's code writes (string literals passed as Outcome reasons)."""
    src = "\n".join(p.read_text() for p in (REPO / "operator" / "interlace_operator").glob("*.py"))
    reasons = set(re.findall(r'Outcome\(\s*Phase\.\w+\.value,\s*"([A-Z][A-Za-z]+)"', src))
    reasons |= set(re.findall(r'reason = "([A-Z][A-Za-z]+)"', src))
    for pair in re.findall(r'"([A-Z][A-Za-z]+)" if [^\n]+ else "([A-Z][A-Za-z]+)"', src):
        reasons |= set(pair)
    return reasons


def test_operations_guide_covers_phases_and_reasons() -> None:
    ops = (DOCS / "operations.md").read_text()
    for phase in Phase:
        assert phase.value in ops, phase
    reasons = _operator_reasons()
    assert {"ClusterInitializing", "JobRunning", "InvalidSpec", "BackoffRetry"} <= reasons, reasons
    missing = sorted(r for r in reasons if f"`{r}`" not in ops)
    assert not missing, f"docs/operations.md does not explain {missing}"
    for topic in ("helm install", "helm upgrade", "kubectl apply --server-side -k", "nodeSelector",
                  "queueName", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "tolerations"):
        assert topic in ops, topic


def test_architecture_has_the_flow() -> None:
    text = (DOCS / "architecture.md").read_text()
    for word in ("PruneJob", "RayJob", "Ray Train", "status", "interlace run", "kopf"):
        assert word in text, word
