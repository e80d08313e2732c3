"""Keep credentials out of every log line, error message and file we write.

Why at record creation and not only care in our own messages: at DEBUG, libraries (botocore, s3fs,
huggingface_hub, urllib3) may echo headers or configuration. `install()` wraps the logging record
factory, so EVERY record of EVERY logger is scrubbed when it is created, before any handler, formatter
or later-added sink sees it. Values come from the environment (that is where the operator puts them,
from Secrets), so nothing has to be registered. Importing interlace.stages.publish installs it; the CLI should
call `install()` at start so that model loading with an HF token is covered too.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from interlace.settings import settings

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words


# Credential values that did not come from the environment (a Hub token read from the login cache or
# a mounted file by huggingface_hub's own lookup): registered when read.
_registered: set[str] = set()


def register(value: str) -> None:
    """Redact this credential value from now on, like the credential variables (`Settings.secret_values`)."""
    if value and len(value) >= MIN_SECRET_LEN:
        _registered.add(value)


def secret_values() -> list[str]:
    """Current credential values (environment and registered), longest first (so overlaps mask fully)."""
    vals = set(settings().secret_values()) | _registered
    return sorted((v for v in vals if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str) -> str:
    for v in secret_values():
        text = text.replace(v, MASK)
    return text


def scrub(record: logging.LogRecord) -> None:
    """Replace credential values in a record's message, traceback and stack (in place)."""
    secrets = secret_values()
    if not secrets:
        return
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


_installed = False


def install() -> None:
    """Scrub every log record of the process from now on (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


@contextmanager
def redacting() -> Iterator[None]:
    """Make sure redaction is on for a block (it stays on afterwards: credentials stay in the env)."""
    install()
    yield
