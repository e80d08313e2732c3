"""Keep credentials out of every log line, error message and file we write.

Why a filter on the handlers and not only care in our own messages: at DEBUG, botocore logs request
headers (the Authorization header carries the access key id) and other libraries may echo
configuration. A `logging.Filter` attached to each handler rewrites the record after formatting its
message, so whatever a library logs, the secret's value never reaches a sink. Values are taken from
the environment (that is where the operator puts them, from Secrets), so nothing has to be registered.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

# Environment variables whose VALUES are credentials.
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
)
MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words


def secret_values() -> list[str]:
    """Current credential values from the environment, longest first (so overlaps mask fully)."""
    vals = {os.environ.get(k, "") for k in SECRET_ENV}
    return sorted((v for v in vals if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str) -> str:
    for v in secret_values():
        text = text.replace(v, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Replace credential values in a record's message and traceback (always lets the record through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if not secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string: keep the raw template
            msg = str(record.msg)
        record.msg, record.args = redact(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def _all_handlers() -> list[logging.Handler]:
    handlers = list(logging.getLogger().handlers)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    return handlers


def install() -> None:
    """Attach the filter to every handler that exists now (idempotent). The CLI calls it at start."""
    for h in _all_handlers():
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


@contextmanager
def redacting() -> Iterator[None]:
    """Attach the filter to all current handlers for the duration of a publish, then detach the
    ones this call added."""
    added = [h for h in _all_handlers() if _FILTER not in h.filters]
    for h in added:
        h.addFilter(_FILTER)
    try:
        yield
    finally:
        for h in added:
            h.removeFilter(_FILTER)
