"""Publishing to the Hugging Face Hub: an explicit upload plan, then one commit.

The plan (repo id, private flag, files with sizes, commit message) is computed without any network,
so it can be shown, logged and tested. Execution creates the repo if needed (private unless
spec.output.hub.private is false) and uploads the folder in ONE commit with `upload_folder`, which is
atomic on the Hub and skips LFS blobs the Hub already has (a retried or repeated publish does not
re-send the weights). The token comes from env HF_TOKEN (the operator mounts it from
spec.output.hub.tokenSecret) and is passed to the client, never logged.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from interlace.errors import InterlaceError
from interlace.publish.retry import RetryPolicy, call_with_retry
from interlace.publish.transfer import model_files
from interlace.spec import HubOutput

log = logging.getLogger("interlace.publish")
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


def hub_token() -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise InterlaceError(
            "spec.output.hub: env HF_TOKEN is not set; put the token under key HF_TOKEN in the Secret "
            "named by spec.output.hub.tokenSecret (the operator mounts it)"
        )
    return token


def push_to_hub(plan: HubUploadPlan, model_dir: Path, *, policy: RetryPolicy) -> str:
    """Execute the plan; returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment now is what counts.
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
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
