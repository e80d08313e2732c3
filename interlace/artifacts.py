"""Atomic writes of the run's artifacts, with normal permissions. Pure standard library.

Every file the library writes for a reader (scores.json, plan.json, results.json, heatmap.png, the model
card, the CRD) goes through `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: a unique
temp file next to the target, then a rename, so a reader never sees half a file and two writers never
share a temp file. `temp_dir` is the directory counterpart (fill it, then `os.replace` it into place).

`tempfile.mkstemp` and `tempfile.mkdtemp` create 0600 files and 0700 directories; renamed into place
they would stay unreadable for the other users of a shared volume. These helpers give them the modes a
plain `open()` / `mkdir()` would: 0666 and 0777 less the process umask (0644 and 0755 under 022).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status; elsewhere: set and restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # not atomic: only where /proc is missing
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from open(): 0666 less the umask (0644 under 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a new directory gets from mkdir(): 0777 less the umask (0755 under 022)."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (unique temp file next to it, then rename), mode 0666 & ~umask.

    Creates the parent directories. Returns the path.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, file_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, doc: Any) -> Path:
    """The one JSON artifact format: 2-space indent, a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def temp_dir(parent: str | Path, *, prefix: str, suffix: str = "") -> Path:
    """A new, unique directory in `parent` with mode 0777 & ~umask (mkdtemp's is 0700).

    Fill it, then `os.replace` it onto the final name: readers see the whole directory or none of it.
    """
    d = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(d, dir_mode())
    return d


def normal_modes(root: str | Path) -> Path:
    """Give a directory tree written by other libraries the normal modes before it is renamed into place.

    Some writers (transformers' sharded safetensors save, for one) leave files 0600: files become
    0666 & ~umask, directories 0777 & ~umask. Symlinks are left alone.
    """
    root = Path(root)
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(root, dmode)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, dmode)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, fmode)
    return root
