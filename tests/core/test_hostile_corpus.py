"""The hostile-PruneJob corpus (tests/fixtures/hostile_prunejobs.py): every case is refused by
`interlace validate --cluster` (exit 2, the field named) and by the operator's own validation path
(parse_prunejob(..., cluster=True), what reconcile.py calls before creating any child), with the same
message; what the policy allows still validates and reaches the pods with the restricted defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from interlace.cli import main
from interlace.schema import podpolicy
from interlace.schema.spec import SpecError, parse_prunejob
from tests.fixtures.hostile_prunejobs import ALLOWED, CASES, Hostile
from tests.fixtures.invalid_prunejobs import valid_doc


def _operator_errors(case: Hostile) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_prunejob(case.doc(), cluster=True)
    return str(err.value).splitlines()


def test_the_corpus_covers_every_control_and_container_kind() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    fields = " ".join(c.field for c in CASES)
    for control in ("privileged", "capabilities.add", "hostPort", "hostNetwork", "hostPID", "hostIPC", "hostPath",
                    "hostProcess", "seccompProfile", "appArmorProfile", "metadata.annotations", "seLinuxOptions.type",
                    "seLinuxOptions.user", "procMount", "sysctls", "runAsNonRoot", "runAsUser",
                    "allowPrivilegeEscalation", "capabilities.drop", "volumes[0].nfs"):
        assert control in fields, control
    kinds = {"initContainers", "containers[0]", "spec.securityContext"}
    assert all(any(k in c.field for c in CASES) for k in kinds)
    assert {c.override["targetGroups"][0] for c in CASES} >= {"head", "workers"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_operator_refuses_it_naming_the_field(case: Hostile) -> None:
    errors = _operator_errors(case)
    assert any(case.field in e for e in errors), errors


def test_baseline_cases_are_refused_under_restricted_too() -> None:
    for case in CASES:
        if case.level == "baseline":
            doc = case.doc()
            doc["spec"]["resources"]["podSecurity"] = "restricted"
            with pytest.raises(SpecError, match=case.field.replace("[", r"\[").replace("]", r"\]")):
                parse_prunejob(doc, cluster=True)


def test_restricted_cases_pass_under_baseline() -> None:
    """Restricted cases break only restricted: podSecurity: baseline takes them (the relaxation works)."""
    for case in CASES:
        if case.level == "restricted":
            doc = case.doc()
            doc["spec"]["resources"]["podSecurity"] = "baseline"
            parse_prunejob(doc, cluster=True)


def test_cli_and_operator_give_the_same_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for case in CASES:
        f = tmp_path / f"{case.id}.yaml"
        f.write_text(yaml.safe_dump(case.doc()))
        files += ["-f", str(f)]
    assert main(["validate", "--cluster", "--json", *files]) == 2
    reports = json.loads(capsys.readouterr().out)
    assert len(reports) == len(CASES)
    for case, report in zip(CASES, reports, strict=True):
        assert report["valid"] is False, case.id
        cli = [f"{e['field']}: {e['message']}" for e in report["errors"]]
        assert cli == _operator_errors(case), case.id
        assert any(e["field"] == case.field for e in report["errors"]), (case.id, report["errors"])


@pytest.mark.parametrize("override", ALLOWED)
def test_what_the_policy_allows_validates(override: dict[str, object]) -> None:
    doc = valid_doc("allowed")
    doc["spec"]["resources"]["podTemplateOverrides"] = [override]
    parse_prunejob(doc, cluster=True)


def test_effective_context_merges_one_level() -> None:
    eff = podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT, {"capabilities": {"add": ["NET_BIND_SERVICE"]}})
    assert eff["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert podpolicy.container_security_context_violations(None, "c", "restricted") == []
    assert podpolicy.pod_security_context_violations(None, "p", "restricted") == []
