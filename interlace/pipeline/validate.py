"""Check a PruneJob without running it: `interlace validate -f FILE` and `interlace.validate(...)`.

Two layers of checks, every problem collected (not only the first), each naming its field:

1. the spec models (interlace.schema.spec), exactly what `interlace run` and the operator apply: unknown
   fields, types, bounds, exclusive fields;
2. what can be checked offline, without Ray, torch or the network:
   * ``spec.model.source``: a builtin name (and its package), a local checkpoint directory with a
     supported ``config.json``, or a well-formed hub id (looked up in the local hub cache only);
     with the layer count known, the pruning amount and the protected layers are checked against it;
   * every data source the run reads (calibration, finetune, evaluation): local shards resolved and
     counted as the run does (interlace.data.check_source), builtin data (its Debian packages), the
     FineVision subset names against the shipped table; other hub datasets only by the form of the id;
   * the evaluation benchmarks (interlace.stages.evaluate.check_benchmarks);
   * ``spec.output``: the URI scheme, the PVC claim against ``spec.resources.pvcName``, the Hub repo id.

With ``cluster=True`` (``--cluster``) the checks are those of a job the operator runs: the output must
be durable (pvc://, s3://, hf://: the Ray pods' filesystems go away with the cluster), an s3:// or hf://
output needs ``spec.resources.pvcName`` (a claim every Ray pod reads the work files from), and local paths
name the pods' filesystem, so a path missing here is a warning, not an error.

What cannot be checked offline (a hub model or dataset that is not cached here) is a warning.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from interlace.errors import InterlaceError
from interlace.schema.limits import max_drop
from interlace.schema.spec import DataSpec, PruneJob, PruneJobSpec, SpecError
from interlace.settings import settings

_FIELD = re.compile(r"^((?:spec|metadata)(?:\.[A-Za-z0-9_]+|\[\d+\])*)(?::|\s)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Decoder layers of the builtin model, for when it has not been converted into the cache yet.
_BUILTIN_LAYERS = {"builtin:smollm2-135m": 30}


@dataclass
class Finding:
    """One problem: the field it is about (a dotted camelCase path) and what is wrong and the fix."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome of `validate`: errors (the job would fail), warnings (not checkable here)."""

    source: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    job: PruneJob | None = None
    num_layers: int | None = None
    layers_to_drop: int | None = None
    cluster: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, where: str, message: str) -> None:
        self.errors.append(Finding(where, message))

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(Finding(where, message))

    def add_error(self, where: str, err: BaseException) -> None:
        """An InterlaceError from a library check: its own field path when it starts with one."""
        text = str(err).strip()
        m = _FIELD.match(text)
        if m:
            self.error(m.group(1), text[len(m.group(1)) :].lstrip(": ").strip())
        else:
            self.error(where, text)

    def raise_for_errors(self) -> None:
        """SpecError with one line per error (what the CLI prints and exits 2 on)."""
        if self.errors:
            raise SpecError("\n".join(str(e) for e in self.errors))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.source,
            "valid": self.ok,
            "mode": "cluster" if self.cluster else "local",
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
        }
        if self.job is not None:
            out["name"] = self.job.metadata.name
            out["model"] = self.job.spec.model.source
        if self.num_layers is not None:
            out["numLayers"] = self.num_layers
        if self.layers_to_drop is not None:
            out["layersToDrop"] = self.layers_to_drop
        return out


# ------------------------------------------------------------------------------------ documents


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        s = str(p)
        if s.startswith("function-"):
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{s}" if out else s)
    return out or "document"


def schema_findings(err: ValidationError) -> list[Finding]:
    """pydantic errors -> findings with the camelCase field path of each."""
    out = []
    for e in err.errors():
        msg = str(e["msg"])
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        loc = _loc(tuple(e["loc"]))
        m = _FIELD.match(msg)  # a cross-field rule's message names a more precise field itself
        if m and m.group(1).startswith(loc) and m.group(1) != loc:
            loc, msg = m.group(1), msg[len(m.group(1)) :].lstrip(": ").strip()
        out.append(Finding(loc, msg))
    return out


def read_documents(path: str | Path) -> dict[str, Any]:
    """The first PruneJob document of a YAML file. Raises SpecError (file problems)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: no such file (pass the PruneJob YAML with -f)")
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", "PruneJob") == "PruneJob"]
    if not jobs:
        raise SpecError(f"{p}: no document of kind PruneJob")
    return jobs[0]


def validate(
    job: PruneJob | dict[str, Any] | str | Path, *, cluster: bool = False, source: str | None = None
) -> ValidationReport:
    """Validate a PruneJob (object, dict or YAML path). Never raises for a bad spec: see the report."""
    if isinstance(job, PruneJob):
        report = ValidationReport(source=source or "<PruneJob>", cluster=cluster)
        doc: Any = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    elif isinstance(job, str | Path):
        report = ValidationReport(source=source or str(job), cluster=cluster)
        try:
            doc = read_documents(job)
        except SpecError as err:
            report.error("document", str(err))
            return report
    else:
        report = ValidationReport(source=source or "<dict>", cluster=cluster)
        doc = job
    if not isinstance(doc, dict):
        report.error("document", "expected a PruneJob mapping (apiVersion, kind, metadata, spec)")
        return report
    try:
        parsed = PruneJob.model_validate(doc)
    except ValidationError as err:
        report.errors.extend(schema_findings(err))
        return report
    report.job = parsed
    check_spec(parsed, report)
    return report


def check_spec(job: PruneJob, report: ValidationReport) -> None:
    """The offline checks beyond the schema (see the module docstring), appended to `report`."""
    spec = job.spec
    if report.cluster:
        _check_cluster(job, report)
    num_layers = _check_model(spec, report)
    if num_layers is not None:
        report.num_layers = num_layers
        _check_amount(spec, num_layers, report)
    for where, data in _data_specs(spec):
        _check_data(data, where, report)
    if spec.evaluation.enabled and not spec.dry_run:
        try:
            from interlace.stages.evaluate import check_benchmarks

            check_benchmarks(spec.evaluation, finetune_data=spec.finetune.data)
        except InterlaceError as err:
            report.add_error("spec.evaluation.benchmarks", err)
    _check_output(job, report)


def _data_specs(spec: PruneJobSpec) -> list[tuple[str, DataSpec]]:
    from interlace.pipeline.run import _data_specs as pipeline_data_specs  # the run's own list

    return pipeline_data_specs(spec)


# ---------------------------------------------------------------------------------------- model


def _layers_in_config(cfg: dict[str, Any]) -> int | None:
    for c in (cfg.get("text_config") or {}, cfg):
        n = c.get("num_hidden_layers") if isinstance(c, dict) else None
        if isinstance(n, int):
            return n
    return None


def _check_config(cfg_path: Path, where: str, spec: PruneJobSpec, report: ValidationReport) -> int | None:
    from interlace.models.load import SUPPORTED_FAMILIES

    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        report.error(where, f"cannot read {cfg_path}: {err}")
        return None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in SUPPORTED_FAMILIES and not spec.model.trust_remote_code:
        report.error(
            where,
            f"unsupported architecture (model_type {model_type!r} in {cfg_path}); supported families: "
            + ", ".join(SUPPORTED_FAMILIES),
        )
        return None
    return _layers_in_config(cfg) if isinstance(cfg, dict) else None


def _check_model(spec: PruneJobSpec, report: ValidationReport) -> int | None:
    """The model source; returns its decoder layer count when it can be known offline."""
    where = "spec.model.source"
    source = spec.model.source.strip()
    if source.startswith("builtin:"):
        from interlace import builtin

        models = [b for b in builtin.BUILTINS if b.startswith(("builtin:smollm2", "builtin:easyvqa-vl"))]
        if source not in models:
            report.error(where, f"unknown builtin model {source!r}; known: {', '.join(models)}")
            return None
        if source.startswith("builtin:easyvqa-vl"):
            # Trained by an explicit step (`interlace builtin`, minutes of CPU); validate checks its
            # data package and the recipe's layer count without training it.
            from interlace.builtin import easyvqa, easyvqa_vl

            try:
                easyvqa.package_dir()
            except InterlaceError as err:
                report.add_error(where, err)
                return None
            return easyvqa_vl.RECIPES[source.removeprefix("builtin:")].layers
        converted = builtin.cache_dir() / "models" / builtin.SMOLLM2_DIR / "config.json"
        if converted.is_file():
            return _check_config(converted, where, spec, report)
        try:
            builtin.smollm2_gguf()
        except InterlaceError as err:
            report.add_error(where, err)
            return None
        return _BUILTIN_LAYERS.get(source)
    path_like = source.startswith(("/", "./", "../", "~", "file:")) or source.count("/") > 1
    local = Path(source.removeprefix("file://")).expanduser()
    if local.exists() or path_like:
        if not local.exists():
            if report.cluster:
                report.warn(
                    where, f"{source} does not exist here; not checked (it names a path in the Ray pods)"
                )
            else:
                report.error(where, f"model directory {source} does not exist")
            return None
        if not (local / "config.json").is_file():
            report.error(where, f"{source} is not a Hugging Face checkpoint directory (no config.json)")
            return None
        return _check_config(local / "config.json", where, spec, report)
    if not _HUB_ID.match(source) or ".." in source or "--" in source or source.endswith((".", "-")):
        report.error(
            where, f"{source!r} is neither an existing directory, a builtin:<name> nor a hub id (org/name)"
        )
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json", revision=spec.model.revision)
    if isinstance(cached, str):
        return _check_config(Path(cached), where, spec, report)
    report.warn(
        where,
        f"hub model {source!r} is not in the local hub cache; its existence and layer count are checked "
        "when the job starts",
    )
    return None


def _check_amount(spec: PruneJobSpec, num_layers: int, report: ValidationReport) -> None:
    pruning = spec.pruning
    field_name = pruning.amount_field()
    if pruning.target is not None:
        most = math.floor(num_layers * pruning.target.max_ratio)
        if most < 1:
            report.error(
                "spec.pruning.target.maxRatio",
                f"{pruning.target.max_ratio} allows no layer of a {num_layers}-layer model to drop; use a "
                f"maxRatio >= {1 / num_layers:.3f}",
            )
        else:
            report.layers_to_drop = min(most, max_drop(num_layers))
        return
    for i, variant in enumerate(pruning.variants()):
        where = f"{field_name}[{i}]" if pruning.is_sweep else field_name
        try:
            n = variant.layers_to_drop(num_layers)
        except ValueError as err:
            msg = str(err).replace(f"spec.pruning.ratio={variant.ratio}", f"ratio {variant.ratio}")
            report.error(where, f"{msg} (the model has {num_layers} decoder layers)")
            continue
        # A sweep reports its largest drop (the variant that needs the most checks to pass).
        report.layers_to_drop = max(n, report.layers_to_drop or 0)
    bad = [i for i in pruning.protected_layers if i >= num_layers]
    if bad:
        report.error(
            "spec.pruning.protectedLayers", f"layer(s) {bad} outside 0..{num_layers - 1} of this model"
        )


# ----------------------------------------------------------------------------------------- data


def _check_data(data: DataSpec, where: str, report: ValidationReport) -> None:
    from interlace.data import check_source
    from interlace.data.sources import FINEVISION_ID, finevision_table

    path = data.path.strip()
    if path.startswith("builtin:"):
        from interlace import builtin

        known = list(builtin.DATA_BUILTINS)
        if path not in known:
            report.error(f"{where}.path", f"unknown builtin data {path!r}; known: {', '.join(known)}")
            return
        from interlace.builtin import easyvqa, english, pydocs

        try:
            if path == "builtin:python-docs":
                pydocs.source_files()
            elif path.startswith("builtin:easy-vqa"):
                easyvqa.package_dir()
            else:
                english.source_files()
        except InterlaceError as err:
            report.add_error(f"{where}.path", err)
        return
    local = Path(path).expanduser()
    is_hub = _HUB_ID.match(path) and not path.startswith((".", "/", "~")) and not local.exists()
    if is_hub and not set("*?[") & set(path):
        if path == FINEVISION_ID:
            table = finevision_table()
            unknown = [s for s in data.subsets if s not in table]
            if unknown:
                report.error(
                    f"{where}.subsets",
                    f"unknown FineVision subset(s) {unknown}; the shipped table lists {len(table)} subsets",
                )
            if len(set(data.subsets)) != len(data.subsets):
                report.error(f"{where}.subsets", f"{data.subsets} lists a subset twice; list each once")
        else:
            report.warn(
                f"{where}.path", f"hub dataset {path!r} is checked when the job starts (no network here)"
            )
        return
    if report.cluster and not local.exists() and not set("*?[") & set(path):
        report.warn(
            f"{where}.path", f"{path} does not exist here; not checked (it names a path in the Ray pods)"
        )
        return
    try:
        check_source(data, where=where)
    except InterlaceError as err:
        report.add_error(f"{where}.path", err)


# --------------------------------------------------------------------------------------- output


def _check_output(job: PruneJob, report: ValidationReport) -> None:
    out = job.spec.output
    uri = out.uri.strip()
    parsed = urlparse(uri)
    where = "spec.output.uri"
    if parsed.scheme not in ("", "file", "pvc", "s3", "hf"):
        report.error(
            where,
            f"unsupported scheme {parsed.scheme!r} in {uri!r}; use a path, file://, pvc://, s3:// or hf://",
        )
        return
    if parsed.scheme in ("", "file") and not uri.removeprefix("file://"):
        report.error(where, "empty path; give a path, pvc://, s3:// or hf:// URI")
    if parsed.scheme == "pvc":
        claim = parsed.netloc
        want = job.spec.resources.pvc_name
        if want is None:
            report.error(
                "spec.resources.pvcName",
                f"spec.output.uri {uri!r} writes to PVC {claim!r} but pvcName is unset; set it to the claim so it is mounted",
            )
        elif claim != want:
            report.error(
                where, f"names PVC {claim!r} but spec.resources.pvcName is {want!r}; use the same claim"
            )
    if parsed.scheme == "s3" and not parsed.netloc:
        report.error(where, f"{uri!r} has no bucket; use s3://<bucket>/<prefix>")
    repos = []
    if parsed.scheme == "hf":
        repos.append((where, f"{parsed.netloc}/{parsed.path.strip('/')}"))
    if out.hub is not None:
        repos.append(("spec.output.hub.repo", out.hub.repo))
    for field_name, repo in repos:
        if not _HUB_ID.match(repo) or "--" in repo or ".." in repo:
            report.error(field_name, f"{repo!r} is not a Hub repo id; use <user-or-org>/<name>")
    if repos and not report.cluster:
        from huggingface_hub import get_token

        if not (settings().hub_token or get_token()):
            report.warn(
                "spec.output.hub" if out.hub is not None else where,
                "no Hugging Face token here (HF_TOKEN, HF_TOKEN_PATH or `hf auth login`): publishing "
                "would fail after training when run on this machine",
            )


def _check_cluster(job: PruneJob, report: ValidationReport) -> None:
    """What the operator requires of a job on a cluster beyond the schema."""
    from interlace.schema import spec as spec_module

    out = job.spec.output
    scheme = urlparse(out.uri.strip()).scheme
    # The operator's own cluster rules, where interlace.schema.spec states them (cluster_spec_errors: one
    # "field: message" line each); otherwise the durable-output rule below.
    operator_rules = getattr(spec_module, "cluster_spec_errors", None)
    if operator_rules is not None:
        for line in operator_rules(job.spec):
            report.add_error("spec", InterlaceError(line))
    elif scheme in ("", "file"):
        report.error(
            "spec.output.uri",
            f"{out.uri!r} is a path inside the Ray pods, lost when the Ray cluster is deleted; use a durable "
            "output: pvc://<claim>/<path> (with spec.resources.pvcName), s3://<bucket>/<prefix> or hf://<org>/<name>",
        )
    if scheme == "s3" and not out.s3_secret:
        report.warn(
            "spec.output.s3Secret",
            "unset: the Ray pods get no AWS_* credentials from the operator (fine only with a pod identity)",
        )
