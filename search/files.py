"""Atomic file writes: a reader (another worker, a dashboard, a resumed study) never sees half a file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary name beside `path` to write to, renamed onto `path` when the block succeeds and removed
    otherwise. It ends with path's own name, so np.save and Keras still see the suffix they need."""
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
