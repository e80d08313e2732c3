"""Publishing a pruned model: model card, then a local path / PVC, an S3 bucket and/or the HF Hub.

``publish(model_dir, spec.output, plan=..., results=..., job=...)`` is what the pipeline calls after
evaluation. Destinations (spec.output.uri):

* a path, ``file:///abs`` or ``file://./rel``: the model goes to ``<path>/model/``;
* ``pvc://<claim>/<path>``: ``<path>/model/`` under the claim's mount (``/data``, env
  ``INTERLACE_PVC_ROOT`` overrides); the claim must be spec.resources.pvcName;
* ``s3://<bucket>/<prefix>``: ``<prefix>/model/`` plus ``results.json`` (and the run's scores.json,
  plan.json, heatmap.png when ``artifacts_dir`` is given) in the bucket; credentials from env;
* ``hf://<org>/<name>``, or spec.output.hub in addition to the uri: a Hub repo (private by default).

Every check that can fail (URI, claim, repo id, token present) runs before anything is written; every
transfer is resumable and retried (interlace.stages.publish.transfer/retry), and a redaction filter keeps
credential values out of all log output for the whole call (interlace.stages.publish.redact). See
docs/publishing.md.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from interlace.errors import InterlaceError
from interlace.schema.spec import HubOutput, LayerPlan, OutputSpec, PruneJob, Results
from interlace.settings import settings
from interlace.stages.publish.card import model_card, write_card
from interlace.stages.publish.hub import HubUploadPlan, plan_hub_upload, push_to_hub
from interlace.stages.publish.redact import install as install_redaction
from interlace.stages.publish.redact import redact, redacting
from interlace.stages.publish.retry import RetryPolicy
from interlace.stages.publish.transfer import TransferStats, publish_local, s3_filesystem, upload_s3

log = logging.getLogger("interlace.stages.publish")
install_redaction()  # before anything here can log; see interlace.stages.publish.redact

ARTIFACTS = ("scores.json", "plan.json", "heatmap.png")


@dataclass
class Destination:
    kind: str  # "local" | "s3" | "hub"
    base: str  # local dir, "bucket/prefix", or hub repo id

    @property
    def model_uri(self) -> str:
        if self.kind == "local":
            return str(Path(self.base) / "model")
        if self.kind == "s3":
            return f"s3://{self.base}/model"
        return f"https://huggingface.co/{self.base}"


def resolve_destination(uri: str, *, job: PruneJob | None = None) -> Destination:
    """Parse spec.output.uri. Raises InterlaceError naming the field and the fix."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if not path:
            raise InterlaceError("spec.output.uri is empty; give a path, pvc://, s3:// or hf:// URI")
        return Destination("local", str(Path(path).expanduser().resolve()))
    if parsed.scheme == "pvc":
        claim = parsed.netloc
        want = job.spec.resources.pvc_name if job is not None else None
        if job is not None and want is None:
            raise InterlaceError(
                f"spec.output.uri {uri!r} writes to PVC {claim!r} but spec.resources.pvcName is unset; "
                "set it to the claim so it is mounted"
            )
        if want is not None and claim != want:
            raise InterlaceError(
                f"spec.output.uri names PVC {claim!r} but spec.resources.pvcName is {want!r}; use the same claim"
            )
        root = settings().pvc_root
        if not root.is_dir():
            raise InterlaceError(f"spec.output.uri {uri!r}: the PVC mount {root} does not exist in this pod")
        return Destination("local", str((root / parsed.path.lstrip("/")).resolve()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InterlaceError(f"spec.output.uri {uri!r}: no bucket; use s3://<bucket>/<prefix>")
        return Destination("s3", f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"))
    if parsed.scheme == "hf":
        return Destination("hub", f"{parsed.netloc}/{parsed.path.strip('/')}")
    raise InterlaceError(
        f"spec.output.uri: unsupported scheme {parsed.scheme!r} in {uri!r}; use a path, file://, pvc://, s3:// or hf://"
    )


@dataclass
class PublishOutcome:
    uri: str
    hub_url: str | None = None
    stats: TransferStats | None = None
    hub_plan: HubUploadPlan | None = None


def _upload_s3_all(
    model_dir: Path, dest: Destination, results: Results | None, artifacts_dir: Path | None, policy: RetryPolicy
) -> TransferStats:
    fs = s3_filesystem()
    stats = upload_s3(fs, model_dir, f"{dest.base}/model", policy=policy)
    with tempfile.TemporaryDirectory(prefix="interlace-publish-") as tmp:
        side = Path(tmp)
        names = []
        if artifacts_dir is not None:
            for name in ARTIFACTS:
                if (artifacts_dir / name).is_file():
                    (side / name).write_bytes((artifacts_dir / name).read_bytes())
                    names.append(name)
        if results is not None:
            (side / "results.json").write_text(json.dumps(results.to_wire(), indent=2) + "\n")
            names.append("results.json")
        extra = upload_s3(fs, side, dest.base, policy=policy, files=names)
    stats.uploaded += extra.uploaded
    stats.skipped += extra.skipped
    return stats


def publish_outputs(
    model_dir: str | Path,
    spec: OutputSpec,
    *,
    plan: LayerPlan | None = None,
    results: Results | None = None,
    job: PruneJob | None = None,
    artifacts_dir: str | Path | None = None,
    retry: RetryPolicy | None = None,
) -> PublishOutcome:
    """Write the card into model_dir, then copy/upload it to every destination of `spec`."""
    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise InterlaceError(f"{src}: not a saved model (no config.json); pass the model directory")
    policy = retry or RetryPolicy()
    dest = resolve_destination(spec.uri, job=job)
    hub = spec.hub
    if dest.kind == "hub":
        hub = hub or HubOutput(repo=dest.base)
    # Checks that can fail, before any write: repo id, token present.
    hub_plan = plan_hub_upload(src, hub) if hub is not None else None
    if hub is not None:
        from interlace.stages.publish.hub import hub_token

        hub_token()
    art = Path(artifacts_dir) if artifacts_dir is not None else None

    with redacting():
        try:
            write_card(src, job=job, plan=plan, results=results)
            if hub_plan is not None:  # the card file is part of the plan
                hub_plan = plan_hub_upload(src, hub, commit_message=hub_plan.commit_message)  # type: ignore[arg-type]
            outcome = PublishOutcome(uri=dest.model_uri, hub_plan=hub_plan)
            if results is not None and dest.kind != "hub":
                results.output_uri = dest.model_uri
            if dest.kind == "local":
                outcome.stats = publish_local(src, Path(dest.model_uri), policy=policy)
            elif dest.kind == "s3":
                outcome.stats = _upload_s3_all(src, dest, results, art, policy)
            if hub_plan is not None:
                outcome.hub_url = push_to_hub(hub_plan, src, policy=policy)
                if results is not None:
                    results.hub_url = outcome.hub_url
                if dest.kind == "hub":
                    outcome.uri = outcome.hub_url
                    if results is not None:
                        results.output_uri = outcome.hub_url
        except InterlaceError as err:
            raise InterlaceError(redact(str(err))) from None
        except Exception as err:
            # Library errors can quote configuration; never let a credential through an error message.
            text = f"{type(err).__name__}: {err}"
            if redact(text) == text:
                raise
            raise RuntimeError(f"publishing to {spec.uri} failed: {redact(text)}") from None
    log.info("published model to %s%s", outcome.uri, f" and {outcome.hub_url}" if outcome.hub_url else "")
    return outcome


def publish(
    model_dir: str | Path,
    spec: OutputSpec,
    *,
    plan: LayerPlan | None = None,
    results: Results | None = None,
    job: PruneJob | None = None,
    artifacts_dir: str | Path | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Publish and return the model's URI. Sets results.output_uri / results.hub_url when given."""
    return publish_outputs(
        model_dir, spec, plan=plan, results=results, job=job, artifacts_dir=artifacts_dir, retry=retry
    ).uri


__all__ = [
    "Destination",
    "PublishOutcome",
    "RetryPolicy",
    "install_redaction",
    "model_card",
    "plan_hub_upload",
    "publish",
    "publish_outputs",
    "resolve_destination",
]
