"""Writing files so that a crash, a full disk or a kill never leaves a half-written one.

Every file the project writes in place (run records, eval JSON, export files, dataset
index, pictures, metrics rewritten on resume) goes through `atomic_output`: the content is
written to a temporary name in the same directory, flushed to disk, then renamed over the
target. A reader sees the old file or the new one, never a mixture; a failure leaves the
old file as it was and removes only the temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    `suffix` (default: the target's own) keeps writers that pick a format by extension
    (PIL, matplotlib, numpy) working.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    # Created with open(.., "x") rather than mkstemp so it gets the umask's permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    open(tmp, "xb").close()
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, **kwargs) -> None:
    """JSON (sorted keys, indented, no NaN) written atomically, with a final newline."""
    kwargs = {"indent": 2, "sort_keys": True, "allow_nan": False, **kwargs}
    atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Create `path` (and parents) if needed and check that files can be created in it.

    Raises OSError with one line naming `what` and the path, for callers to print.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"{what} {path}: not writable ({e.strerror or e})") from None
    return path
