"""`--json` on the CLI: exactly one JSON document on stdout, everything else on stderr.

Libraries print to stdout on their own (Ray forwards its workers' output to the driver's stdout,
some loaders print), so while a command works, file descriptor 1 points at stderr; the JSON is
written once the work is done and stdout is restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Send everything written to stdout (Python and native, fd 1) to stderr inside the block."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_json(doc: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()
