"""Decoded images on disk, once per (dataset content, image size): a memory-mapped uint8 array.

The first process that needs a folder, CSV or TFDS data set at a size decodes it, with a progress bar, into
<studies>/_cache/images/<key>/ (images.u8: the uint8 rows one after another; labels.npy, parts.npy,
meta.json with the shape), appending each image to the file as it is decoded: decoding holds one chunk in
memory, not the data set (and no dirty mapped pages either). Every later process, worker
and resumed study maps the same file instead of decoding again; the pages are the kernel's page cache,
shared between processes and given back under memory pressure.

The key is the data set's content: every file's path, size and modification time, its label and given part,
the class names and the image size (KEY_VERSION too). Change, add or remove one image and the key changes:
nothing stale is ever read. Old entries stay until deleted (`rm -r studies/_cache/images`). An entry is checked
each time it is loaded (files present, sizes as meta.json says); a damaged one is decoded again, with a warning.

TRANSFER_SEARCH_IMAGE_CACHE = disk (default) | memory: memory decodes into RAM per process, as before.
A folder is written under a temporary name and renamed when complete, so a reader never sees half of it
and two workers decoding at once both end up with a whole copy (the second rename loses, harmlessly).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from search.config import studies_dir
from search.errors import UserError

KEY_VERSION = 2  # bump when decoding itself changes (resizing, EXIF handling)
MODES = ("disk", "memory")


class Decoded(NamedTuple):
    images: np.ndarray  # uint8 [N, size, size, 3]: a read-only memory map, or an in-memory array
    labels: np.ndarray  # int32 [N]
    classes: tuple[str, ...]
    parts: np.ndarray | None  # int8 [N]: 0 train, 1 validation, 2 test, where the data set comes split; else None
    file: str | None = None  # the stored raw file `images` maps (search.data.rows reads batches from it)
    skipped: int = 0  # files left out: unreadable images (and, from a folder's listing, files that are not images)


Row = tuple  # (uint8 image [size, size, 3] or None when unreadable, label, part, name for messages)


def mode() -> str:
    value = os.environ.get("TRANSFER_SEARCH_IMAGE_CACHE", "disk")
    if value not in MODES:
        raise UserError(f"TRANSFER_SEARCH_IMAGE_CACHE={value!r}; valid: {', '.join(MODES)}")
    return value


def folder_of(key: str) -> Path:
    return studies_dir() / "_cache" / "images" / key


def key_of(identity: list) -> str:
    """A content key from JSON-able parts (file facts, labels, classes, size...)."""
    digest = hashlib.sha256(json.dumps([KEY_VERSION, *identity], default=str).encode())
    return digest.hexdigest()[:24]


def file_facts(files: list[Path]) -> list:
    """What a decoded file depends on, without reading it: path, size, modification time."""
    facts = []
    for f in files:  # the absolute path, not the resolved one: resolving costs a lookup per path part
        st = os.stat(f)
        facts.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return facts


def stored(identity: list, n: int, size: int, classes, rows: Callable[[], Iterator[Row]], what: str,
           has_parts: bool = False) -> Decoded:
    """The decoded data set: mapped from disk when its key is there, else decoded from `rows()` (n rows)."""
    classes = tuple(classes)
    if mode() == "memory":
        images = np.empty((n, size, size, 3), np.uint8)

        def put(i, image):
            images[i] = image

        labels, parts, keep = _decode(n, put, rows(), what)
        return Decoded(images if len(keep) == n else images[keep], labels, classes, parts if has_parts else None,
                       skipped=n - len(keep))
    folder = folder_of(key_of([*identity, size, list(classes)]))
    if folder.exists():
        damage = damaged(folder)
        if damage is None:
            return _load(folder)
        # a full disk, a killed copy, a partial rm: never read it as data; decode again in its place
        print(f"warning: decoded-image store {folder} is damaged ({damage}); decoding {what} again", flush=True)
        _discard(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with open(tmp / "images.u8", "wb") as out:  # readable rows appended in order: unreadable ones never land
            labels, parts, keep = _decode(n, lambda i, image: out.write(np.ascontiguousarray(image).data), rows(),
                                          what)
        np.save(tmp / "labels.npy", labels)
        if has_parts:
            np.save(tmp / "parts.npy", parts)
        (tmp / "meta.json").write_text(json.dumps({"classes": list(classes), "what": what, "images": len(keep),
                                                   "size": size, "parts": has_parts, "skipped": n - len(keep)}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process stored it first: theirs is the same content
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    damage = damaged(folder)  # the damaged entry could not be moved aside (a read-only folder): say so, never map it
    if damage is not None:
        raise UserError(f"decoded-image store {folder} is damaged ({damage}) and cannot be replaced: delete it")
    return _load(folder)


def damaged(folder: Path) -> str | None:
    """What is wrong with a stored entry (a file missing, a size that disagrees with meta.json), or None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        n, size = int(meta["images"]), int(meta["size"])
        tuple(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"meta.json unreadable: {type(exc).__name__}"
    images = folder / "images.u8"
    if not images.is_file():
        return "images.u8 missing"
    if images.stat().st_size != n * size * size * 3:
        return f"images.u8 has {images.stat().st_size} bytes, meta.json says {n * size * size * 3}"
    wanted = ["labels.npy"] + (["parts.npy"] if meta.get("parts") else [])
    for name in wanted:
        try:
            length = len(np.load(folder / name, mmap_mode="r"))
        except FileNotFoundError:
            return f"{name} missing"
        except (OSError, ValueError, EOFError) as exc:
            return f"{name} unreadable: {type(exc).__name__}"
        if length != n:
            return f"{name} has {length} rows, meta.json says {n}"
    return None


def _discard(folder: Path) -> None:
    """Move a damaged entry out of the way (renamed first: a process mapping it keeps its pages), then delete it."""
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.damaged")
    try:
        os.replace(folder, aside)
    except OSError:
        return  # another process moved it already
    shutil.rmtree(aside, ignore_errors=True)


def _load(folder: Path) -> Decoded:
    meta = json.loads((folder / "meta.json").read_text())
    parts, file = folder / "parts.npy", folder / "images.u8"
    images = np.memmap(file, np.uint8, mode="r", shape=(meta["images"], meta["size"], meta["size"], 3))
    return Decoded(images, np.load(folder / "labels.npy"), tuple(meta["classes"]),
                   np.load(parts) if parts.is_file() else None, str(file), meta.get("skipped", 0))


def _decode(n: int, put: Callable, rows: Iterator[Row], what: str):
    """put(i, image) each readable row, with a progress bar: (labels, parts, row numbers) of the readable rows."""
    from tqdm import tqdm

    labels, parts, keep, bad = np.zeros(n, np.int32), np.zeros(n, np.int8), [], []
    with tqdm(total=n, desc=f"decoding {what}", unit="image", file=sys.stderr, mininterval=2,
              disable=n < 500) as bar:
        for i, (image, label, part, name) in enumerate(rows):
            labels[i], parts[i] = label, part
            if image is None:
                bad.append(name)
            else:
                put(i, image)
                keep.append(i)
            bar.update(1)
    if bad:  # skip unreadable files, say so once, keep going: one broken JPEG must not stop a study
        print(f"warning: skipped {len(bad)} unreadable image(s), first: {bad[0]}", flush=True)
    if not keep:
        raise UserError(f"{what}: no readable image")
    keep = np.asarray(keep)
    return labels[keep], parts[keep], keep
