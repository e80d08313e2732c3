"""Copying a model directory to its destination: a local path / mounted PVC, or an S3 bucket.

Both are resumable: a file already at the destination with the same size and content hash is skipped,
so a publish that died half-way (pod evicted, network down) continues where it stopped.

* Local / PVC: files are staged in ``<dest>.partial/`` (each written as ``*.tmp`` then renamed) and the
  staging directory replaces ``<dest>`` only once every file is there, so readers never see half a
  model. Files identical to ones in the staging dir (an interrupted run) or in the current ``<dest>``
  (an earlier complete run; hard-linked) are not copied again. Hash: sha256.
* S3 (fsspec + s3fs): one PUT per object (atomic per object); the model card README.md goes last, so a
  prefix with a README.md is complete. Hash: the object's ETag, compared with the local file's MD5
  (single PUT) or S3's multipart ETag for the part size we upload with.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from interlace.errors import InterlaceError
from interlace.settings import settings
from interlace.stages.publish.retry import RetryPolicy, call_with_retry

log = logging.getLogger("interlace.stages.publish")

S3_PART_SIZE = 64 * 2**20  # multipart part size we upload with (s3fs multipart starts at 2 parts)
_CHUNK = 4 * 2**20


@dataclass
class TransferStats:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def model_files(model_dir: Path) -> list[str]:
    """Relative paths of the files to publish; weights first, the model card last."""
    files = sorted(
        p.relative_to(model_dir).as_posix()
        for p in model_dir.rglob("*")
        if p.is_file() and not p.name.endswith(".tmp") and ".cache" not in p.relative_to(model_dir).parts
    )

    def order(rel: str) -> tuple[int, str]:
        if rel == "README.md":
            return (2, rel)
        return (0 if rel.endswith((".safetensors", ".bin")) else 1, rel)

    return sorted(files, key=order)


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def s3_etag(path: Path, part_size: int = S3_PART_SIZE) -> str:
    """The ETag S3 gives this file when uploaded by s3fs with `part_size` parts."""
    size = path.stat().st_size
    if size < 2 * part_size:
        return _digest(path, "md5")
    parts = []
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            parts.append(hashlib.md5(chunk).digest())
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


# -------------------------------------------------------------------------------------- local / PVC


def _same(candidate: Path, src: Path) -> bool:
    """Same size and sha256 (size first: cheap, and most mismatches stop there)."""
    return (
        candidate.is_file()
        and candidate.stat().st_size == src.stat().st_size
        and _digest(candidate, "sha256") == _digest(src, "sha256")
    )


def publish_local(
    model_dir: Path, dest: Path, *, policy: RetryPolicy, files: Iterable[str] | None = None
) -> TransferStats:
    """Copy `model_dir` to `dest` (resumable, swapped in at the end)."""
    stats = TransferStats()
    src = model_dir.resolve()
    dest = dest.resolve()
    if src == dest:
        stats.skipped.extend(model_files(src))
        return stats
    if dest.is_relative_to(src):
        raise InterlaceError(f"spec.output.uri: destination {dest} is inside the model directory {src}")
    staging = dest.with_name(dest.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    for rel in files if files is not None else model_files(src):
        s, d = src / rel, staging / rel
        if _same(d, s):
            stats.skipped.append(rel)
            continue
        if _same(dest / rel, s):  # already published by an earlier run: link it in, do not copy
            d.parent.mkdir(parents=True, exist_ok=True)
            d.unlink(missing_ok=True)
            try:
                os.link(dest / rel, d)
            except OSError:
                shutil.copyfile(dest / rel, d)
            stats.skipped.append(rel)
            continue

        def copy(s: Path = s, d: Path = d) -> None:
            d.parent.mkdir(parents=True, exist_ok=True)
            tmp = d.with_name(d.name + ".tmp")
            shutil.copyfile(s, tmp)
            os.replace(tmp, d)

        call_with_retry(f"copy of {rel}", copy, policy)
        stats.uploaded.append(rel)
    # Files of an older model that are not part of this one must not survive in the staging dir.
    wanted = set(model_files(src))
    for stale in model_files(staging):
        if stale not in wanted:
            (staging / stale).unlink()
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    log.info("published %d files to %s (%d unchanged)", len(stats.uploaded), dest, len(stats.skipped))
    return stats


# ---------------------------------------------------------------------------------------------- S3


def s3_filesystem() -> Any:
    """An s3fs filesystem from the standard AWS env (set by the operator from spec.output.s3Secret).

    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN if present (else botocore's default
    chain, e.g. a pod identity), AWS_ENDPOINT_URL for S3-compatible stores (MinIO, Ceph, ...),
    AWS_REGION / AWS_DEFAULT_REGION. botocore's own retries are off: call_with_retry is the one policy.
    """
    import s3fs

    env = settings()
    endpoint, region = env.aws_endpoint_url, env.aws_region
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    return s3fs.S3FileSystem(
        key=_secret(env.aws_access_key_id),
        secret=_secret(env.aws_secret_access_key),
        token=_secret(env.aws_session_token),
        client_kwargs=client_kwargs,
        config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 10},
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def _remote_etag(fs: Any, rpath: str) -> tuple[int, str] | None:
    try:
        info = fs.info(rpath, refresh=True)
    except FileNotFoundError:
        return None
    return int(info.get("size", -1)), str(info.get("ETag", "")).strip('"')


def upload_s3(
    fs: Any, local_dir: Path, dest: str, *, policy: RetryPolicy, files: Iterable[str] | None = None
) -> TransferStats:
    """Upload `files` (default: all, card last) of `local_dir` to s3://`dest`/ (resumable, retried)."""
    stats = TransferStats()
    dest = dest.rstrip("/")
    for rel in files if files is not None else model_files(local_dir):
        src = local_dir / rel
        rpath = f"{dest}/{rel}"
        remote = call_with_retry(f"stat of s3://{rpath}", functools.partial(_remote_etag, fs, rpath), policy)
        if remote is not None and remote[0] == src.stat().st_size and remote[1] == s3_etag(src):
            stats.skipped.append(rel)
            log.debug("s3://%s is up to date, skipped", rpath)
            continue
        call_with_retry(
            f"upload of {rel}",
            functools.partial(fs.put_file, str(src), rpath, chunksize=S3_PART_SIZE),
            policy,
        )
        stats.uploaded.append(rel)
        log.info("uploaded s3://%s", rpath)
    log.info("published %d files to s3://%s (%d unchanged)", len(stats.uploaded), dest, len(stats.skipped))
    return stats


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
