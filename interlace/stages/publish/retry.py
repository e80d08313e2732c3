"""One retry policy for every upload: tenacity, exponential backoff, each retry logged.

Transient failures (connection refused/reset, timeouts, 5xx, throttling) are retried; permanent ones
(access denied, missing bucket, bad request) fail at once, so a wrong credential does not cost minutes.
botocore's own retries are switched off for S3 (see transfer.py) so that every retry is this one and
shows up in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from interlace.stages.publish.redact import redact

log = logging.getLogger("interlace.stages.publish")
T = TypeVar("T")

_PERMANENT_OS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    wait_initial: float = 1.0  # seconds; doubles per attempt
    wait_max: float = 30.0


def is_transient(err: BaseException) -> bool:
    """True for errors worth retrying."""
    if isinstance(err, _PERMANENT_OS) or type(err).__name__ == "OfflineModeIsEnabled":
        return False
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(status, int):  # huggingface_hub / httpx HTTP errors
        return status >= 500 or status in (408, 429)
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            http = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return http >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError")
        if isinstance(err, BotoCoreError):
            return True
    except ImportError:
        pass
    # httpx (and the httpx fork huggingface_hub ships) transport errors: matched by class name so
    # that either package counts without importing both.
    if {c.__name__ for c in type(err).__mro__} & {"TransportError", "ConnectError", "TimeoutException"}:
        return True
    return isinstance(err, OSError | TimeoutError | ConnectionError)


def call_with_retry(what: str, fn: Callable[[], T], policy: RetryPolicy) -> T:
    """Run fn, retrying transient errors per `policy`; logs each retry (redacted)."""

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning(
            "retrying %s (attempt %d of %d failed: %s)",
            what,
            state.attempt_number,
            policy.attempts,
            redact(f"{type(err).__name__}: {err}"),
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.wait_initial, max=policy.wait_max),
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
