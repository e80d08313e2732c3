"""Publishing to the Hugging Face Hub: an explicit upload plan, then one commit.

The plan (repo id, private flag, files with sizes, commit message) is computed without any network,
so it can be shown, logged and tested. Execution creates the repo if needed (private unless
spec.output.hub.private is false) and uploads the folder with `upload_folder`, which skips blobs the
Hub already has (a retried or repeated publish does not re-send the weights). A model of
LARGE_FOLDER_BYTES or more goes through `upload_large_folder` where the installed huggingface_hub has
it (1.x: resumable, multi-threaded, several commits); huggingface_hub 2.x removed it because
`upload_folder` itself became resumable and commits large folders in batches (with hf_xet).

The token: env INTERLACE_HUB_TOKEN (the operator mounts it from the Hub output's Secret when the
job also has a separate read token for the model), else huggingface_hub's own lookup: env HF_TOKEN,
the file HF_TOKEN_PATH names (a mounted Secret) or the login cache `hf auth login` writes. It is
passed to the client and registered for redaction, never logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from interlace.errors import InterlaceError
from interlace.schema.spec import HubOutput
from interlace.settings import settings
from interlace.stages.publish.retry import RetryPolicy, call_with_retry
from interlace.stages.publish.transfer import model_files

log = logging.getLogger("interlace.stages.publish")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class HubUploadPlan:
    repo_id: str
    private: bool
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, bytes)
    commit_message: str = "Upload INTERLACE-pruned model"
    repo_type: str = "model"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def total_bytes(self) -> int:
        return sum(s for _, s in self.files)


def plan_hub_upload(model_dir: Path, hub: HubOutput, *, commit_message: str | None = None) -> HubUploadPlan:
    """What would be uploaded where. Raises InterlaceError for an invalid repo id or an empty model."""
    if not _REPO_ID.match(hub.repo) or "--" in hub.repo or ".." in hub.repo:
        raise InterlaceError(
            f"spec.output.hub.repo: {hub.repo!r} is not a Hub repo id; use <user-or-org>/<name>"
        )
    files = [(rel, (model_dir / rel).stat().st_size) for rel in model_files(model_dir)]
    if not any(rel == "config.json" for rel, _ in files):
        raise InterlaceError(f"{model_dir}: no config.json; publish a saved model directory")
    plan = HubUploadPlan(repo_id=hub.repo, private=hub.private, files=files)
    if commit_message:
        plan.commit_message = commit_message
    return plan


LARGE_FOLDER_BYTES = 5 * 1024**3  # from this size on, upload_large_folder (when available)


def hub_token() -> str:
    """The token to publish with (see the module docstring); InterlaceError naming the ways to give one."""
    from huggingface_hub import get_token

    from interlace.stages.publish.redact import register

    configured = settings().hub_token
    token = (configured.get_secret_value().strip() if configured else "") or get_token()
    if not token:
        raise InterlaceError(
            "spec.output.hub: no Hugging Face token found (env HF_TOKEN, the file HF_TOKEN_PATH names, or the "
            "login cache of `hf auth login`); on a cluster put it under key HF_TOKEN in the Secret named by "
            "spec.output.hub.tokenSecret (the operator mounts it)"
        )
    register(token)
    return token


def uses_large_folder(plan: HubUploadPlan, api: object) -> bool:
    """upload_large_folder for large models, where the installed huggingface_hub has it."""
    return plan.total_bytes >= LARGE_FOLDER_BYTES and hasattr(api, "upload_large_folder")


def push_to_hub(plan: HubUploadPlan, model_dir: Path, *, policy: RetryPolicy) -> str:
    """Execute the plan; returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment now is what counts.
    if settings().offline:
        raise InterlaceError(
            "spec.output.hub: HF_HUB_OFFLINE is set, so nothing can be uploaded to the Hub; unset it "
            "or remove spec.output.hub"
        )
    api = HfApi(token=hub_token())
    allow = [rel for rel, _ in plan.files]
    log.info(
        "uploading %d files (%d bytes) to %s (%s)",
        len(plan.files), plan.total_bytes, plan.repo_id, "private" if plan.private else "public",
    )
    try:
        call_with_retry(
            f"creation of {plan.repo_id}",
            lambda: api.create_repo(plan.repo_id, private=plan.private, repo_type=plan.repo_type, exist_ok=True),
            policy,
        )
        if uses_large_folder(plan, api):
            log.info("large model (%d bytes): resumable upload_large_folder", plan.total_bytes)
            call_with_retry(
                f"upload to {plan.repo_id}",
                lambda: api.upload_large_folder(  # type: ignore[attr-defined]
                    repo_id=plan.repo_id,
                    folder_path=str(model_dir),
                    repo_type=plan.repo_type,
                    private=plan.private,
                    allow_patterns=allow,
                ),
                policy,
            )
        else:
            call_with_retry(
                f"upload to {plan.repo_id}",
                lambda: api.upload_folder(
                    repo_id=plan.repo_id,
                    folder_path=str(model_dir),
                    repo_type=plan.repo_type,
                    commit_message=plan.commit_message,
                    allow_patterns=allow,
                ),
                policy,
            )
    except OfflineModeIsEnabled:
        raise InterlaceError(
            "spec.output.hub: HF_HUB_OFFLINE is set, so nothing can be uploaded to the Hub; unset it "
            "or remove spec.output.hub"
        ) from None
    return plan.url
