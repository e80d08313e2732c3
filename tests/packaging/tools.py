"""Shared helpers of the packaging tests: the pinned helm/kubectl binaries, rendering, RBAC rules.

helm and kubectl are the pinned builds of hack/testbed/build.sh (not whatever is on PATH: the
system kubectl is older than the test API server). Tests that only render (helm lint/template,
kubectl kustomize) need no running cluster, only these binaries.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.testbed import BUILD_COMMAND, read_versions, testbed_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "interlace-operator"
MANIFESTS = REPO / "manifests"
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = str(CHART_META["appVersion"])



class GoYamlLoader(yaml.SafeLoader):
    """PyYAML reads `1e-05` (no dot) as a string (YAML 1.1); Go's YAML (kubectl, kustomize, helm, the
    API server) reads it as a float, and kustomize writes floats that way. Parse like Go does."""


GoYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=GoYamlLoader) if d]


# Resources of interlace_operator.rbac.RULES that are cluster-scoped (the rest are namespaced).
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


def _binary(component: str, version_key: str, name: str) -> Path:
    path = testbed_dir() / f"{component}-{read_versions()[version_key]}" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the pinned tools once with `{BUILD_COMMAND}`", pytrace=False)
    return path


def helm_bin() -> Path:
    return _binary("helm", "HELM_VERSION", "helm")


def kubectl_bin() -> Path:
    return _binary("kubernetes", "K8S_VERSION", "kubectl")


def _isolated_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        # No cluster: helm template / kubectl kustomize must not read a real kubeconfig.
        KUBECONFIG=str(home / "no-kubeconfig"),
    )
    return env


def run(binary: Path, args: Sequence[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="interlace-pkg-") as home:
        proc = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=_isolated_env(Path(home)), timeout=timeout
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"{binary.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(helm_bin(), args, check=check)


def render(
    values: dict[str, Any] | None = None,
    *extra: str,
    release: str = "interlace",
    namespace: str = "interlace-system",
    command: str = "template",
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` (or lint, with command="lint") of the chart with `values` as a values file."""
    with tempfile.TemporaryDirectory(prefix="interlace-values-") as tmp:
        args: list[str] = [command]
        if command == "template":
            args += [release, str(CHART), "--namespace", namespace]
        else:
            args += [str(CHART), "--namespace", namespace]
        if values:
            vf = Path(tmp) / "values.yaml"
            vf.write_text(yaml.safe_dump(values))
            args += ["--values", str(vf)]
        return helm(*args, *extra, check=check)


def template(
    values: dict[str, Any] | None = None,
    *extra: str,
    release: str = "interlace",
    namespace: str = "interlace-system",
) -> list[dict[str, Any]]:
    proc = render(values, *extra, release=release, namespace=namespace)
    return load_all(proc.stdout)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    proc = run(kubectl_bin(), ["kustomize", str(MANIFESTS / "overlays" / overlay)])
    return load_all(proc.stdout)


def operator_objs(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything but the users' ClusterRoles (interlace_operator.user_roles, test_user_roles.py) and the
    leader-election Role and RoleBinding (interlace_operator.leader, test_ha_packaging.py): the
    operator's own RBAC as interlace_operator.rbac.RULES describes it."""
    return [o for o in objs
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") not in EXTRA_RBAC]


EXTRA_RBAC = {"user-roles", "leader-election"}


def by_kind(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_rules() -> list[dict[str, Any]]:
    from interlace_operator.rbac import RULES

    return [dict(r) for r in RULES]


def split_rules() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(namespaced rules, cluster-scoped rules) of interlace_operator.rbac.RULES, in order."""
    rules = operator_rules()
    cluster = [r for r in rules if set(r["resources"]) & CLUSTER_SCOPED]
    for r in cluster:
        assert set(r["resources"]) <= CLUSTER_SCOPED, f"mixed-scope rule: {r}"
    return [r for r in rules if r not in cluster], cluster


def normalize(rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules as the API server would compare them (drop empty keys)."""
    return [{k: v for k, v in r.items() if v} for r in rules]


def rules_yaml(rules: list[dict[str, Any]]) -> str:
    """What to paste into the chart's _rbac.tpl / the manifests when RULES change."""
    import json

    return "\n".join(
        f"- apiGroups: {json.dumps(r['apiGroups'])}\n  resources: {json.dumps(r['resources'])}\n"
        f"  verbs: {json.dumps(r['verbs'])}"
        for r in rules
    )
