"""ImageRows: a split's images as a view of the decoded array (rows `index`, some mirrored), never a copy.

A split (search.data.datasets.Split) holds its rows' numbers, not their pixels, so a 30k-image data set costs
its index arrays until something reads a batch. Reading a batch gathers just those rows; where the array is
the on-disk store (search.data.image_store) the rows are read with pread from the file, not through a memory
map: the pages sit in the kernel's page cache, shared between processes, and never in this process's memory.
The mirror augmentation is a flag per row (flipped left-right as it is read): a fixed view the feature cache
can key, and no second copy of the training split.

It behaves like a read-only uint8 array where the code needs one: len, shape, dtype, nbytes, integer /
slice / index-array access (each returns a NumPy array of the rows), iteration, np.asarray (all rows, for
the small consumers that want them in memory).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from search.memo import ArrayMemo


class ImageRows:
    def __init__(self, base: np.ndarray, index=None, flipped=None, file: str | None = None):
        """base: uint8 [N, H, W, 3]; index: rows of base (default all); flipped: per row, read mirrored;
        file: the raw file base maps (row after row, no header), where base is the on-disk store's."""
        self.base, self.file = base, file
        self.index = np.arange(len(base), dtype=np.int64) if index is None else np.asarray(index, np.int64)
        self.flipped = np.zeros(len(self.index), bool) if flipped is None else np.asarray(flipped, bool)
        self._digest: str | None = None

    # --- the array-like surface
    @property
    def shape(self) -> tuple:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.base.dtype.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.rows(np.asarray([key]))[0]
        if isinstance(key, slice):
            return self.rows(np.arange(len(self))[key])
        if isinstance(key, tuple):  # pixel-level indexing: on the rows in memory
            return np.asarray(self)[key]
        return self.rows(np.asarray(key))

    def __iter__(self):
        for start in range(0, len(self), 256):
            yield from self.rows(np.arange(start, min(start + 256, len(self))))

    def __array__(self, dtype=None, copy=None):
        out = self.rows(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    # --- views
    def take(self, positions) -> ImageRows:
        """Rows `positions` of this view, as a view."""
        positions = np.asarray(positions, np.int64)
        return ImageRows(self.base, self.index[positions], self.flipped[positions], self.file)

    def with_mirrors(self) -> ImageRows:
        """These rows, then the same rows mirrored left-right (the `mirror` augmentation), as a view."""
        return ImageRows(self.base, np.concatenate([self.index, self.index]),
                         np.concatenate([self.flipped, ~self.flipped]), self.file)

    def mirrored(self) -> ImageRows:
        """Every row mirrored left-right, as a view."""
        return ImageRows(self.base, self.index, ~self.flipped, self.file)

    # --- reading
    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The rows at `positions` of this view, in memory."""
        rows = self.index[positions]
        out = _read_file(self.file, rows, self.base.shape[1:], self.base.dtype) if self.file else self.base[rows]
        flip = self.flipped[positions]
        if flip.any():
            out[flip] = out[flip][:, :, ::-1]
        return out

    def digest(self) -> str:
        """What the rows are, for the feature cache's keys: the base's identity (the store's file, whose
        folder name is a content key; else a hash of the base's bytes, once per base), the rows, the flips."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update((f"file:{self.file}" if self.file else f"bytes:{_bytes_digest(self.base)}").encode())
            h.update(f"{self.shape}{self.dtype}".encode())
            h.update(self.index.tobytes())
            h.update(self.flipped.tobytes())
            self._digest = h.hexdigest()
        return self._digest


_base_digests = ArrayMemo()


def _bytes_digest(array: np.ndarray) -> str:
    def compute(a):
        h = hashlib.blake2b(f"{a.shape}{a.dtype}".encode(), digest_size=16)
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        return h.hexdigest()

    return _base_digests.get(array, compute)


def _read_file(path: str, rows: np.ndarray, row_shape: tuple, dtype) -> np.ndarray:
    """Rows of a raw row-after-row file, read with one pread per run of consecutive rows."""
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    buffer = np.empty((len(rows), row_bytes), np.uint8)  # the rows in file order
    fd = os.open(path, os.O_RDONLY)
    try:
        runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(ordered) != 1) + 1) if len(rows) else []
        for run in runs:  # consecutive rows: one read
            first = int(ordered[run[0]])
            view, offset = memoryview(buffer[run[0]:run[-1] + 1]).cast("B"), first * row_bytes
            while len(view):  # one call reads at most about 2 GiB on Linux: go on where it stopped
                got = os.preadv(fd, [view], offset)
                if got == 0:
                    raise OSError(f"{path}: ends before row {offset // row_bytes}")
                view, offset = view[got:], offset + got
    finally:
        os.close(fd)
    out = np.empty_like(buffer)
    out[order] = buffer
    return out.view(dtype).reshape(len(rows), *row_shape)
