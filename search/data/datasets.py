"""Datasets: decode once per process, split deterministically, feed tf.data pipelines.

A dataset spec is one string:
  builtin:shapes | builtin:shapes-source   the offline tasks of search/data/builtin.py
  tfds:<name>                              a TensorFlow Datasets name (needs the network or a TFDS cache)
  <folder>                                 one sub-folder per class, images inside (Keras/Kaggle layout); or
                                           train/, val/ (or validation/) and test/ parts, each with the same
                                           class sub-folders: the given split is used as is (a missing val/
                                           or test/ part is cut from train/ by the split fractions)
  <file>.csv                               rows of path,label after a header row (Kaggle's layout); a
                                           relative path is relative to the CSV's folder
Folder, CSV and TFDS images are decoded and resized once per (data set content, image size) into a memory-mapped
uint8 file that every later process maps (search/data/image_store.py); built-in tasks are generated in memory.
The split is stratified and depends only on the split fractions and split seed (or is the folder's own), so
the test part is the same in every trial, in export and in retraining, and a study never sees it.

TensorFlow (and TFDS, PIL) are imported inside the functions that need them: export fingerprints data
without starting TensorFlow.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.data import builtin
from search.data.image_store import Decoded, file_facts, stored
from search.data.rows import ImageRows
from search.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PART_FOLDERS = {"train": 0, "val": 1, "validation": 1, "test": 2}  # a pre-split folder's parts


@dataclass(frozen=True)
class Origin:
    """Where a split's images come from: rows `index` of the concatenation of `bases`. Splits cut from one
    view (cross-validation folds) share their bases, so the frozen part's outputs are computed once per
    base image and sliced per fold (search.training.train), never once per fold."""

    bases: tuple  # of ImageRows that live for the process
    index: np.ndarray  # int64 rows into the concatenation of bases


@dataclass(frozen=True)
class Split:
    images: ImageRows  # uint8 [N, size, size, 3] as a view of the decoded array (an array given is wrapped)
    labels: np.ndarray  # int32 [N]
    origin: Origin | None = None  # set for folds: images are the rows origin.index of the bases, concatenated

    def __post_init__(self):
        if not isinstance(self.images, ImageRows):
            object.__setattr__(self, "images", ImageRows(np.asarray(self.images)))

    def __len__(self) -> int:
        return len(self.labels)


def subset(split: Split, index: np.ndarray) -> Split:
    """Rows `index` of a split (a view), remembering that they come from it (see Origin)."""
    index = np.asarray(index, dtype=np.int64)
    return Split(split.images.take(index), split.labels[index], Origin((split.images,), index))


@dataclass(frozen=True)
class SearchData:
    """What a study may see: train and validation. The test part is loaded only by retraining."""

    train: Split
    val: Split
    class_names: tuple[str, ...]


@functools.lru_cache(maxsize=4)
def load_images(spec: str, image_size: int) -> Decoded:
    """All images of a dataset at one size, decoded once: (uint8 images, labels, classes, given parts or None)."""
    if spec.startswith("builtin:"):
        images, labels, classes = _load_builtin(spec.split(":", 1)[1])
        if images.shape[1] != image_size:
            images = _resize_all(images, image_size)
        return Decoded(images, labels.astype(np.int32), tuple(classes), None)
    if spec.startswith("tfds:"):
        return _load_tfds(spec.split(":", 1)[1], image_size)
    if spec.lower().endswith(".csv"):
        return _load_csv(Path(spec), image_size)
    return _load_folder(Path(spec), image_size)


def _load_builtin(name: str):
    if name not in builtin.TASKS:
        raise UserError(f"unknown built-in dataset {name!r}; valid: {', '.join(builtin.TASKS)}")
    return builtin.make_task(name)


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def _read_image(path: Path, size: int) -> np.ndarray | None:
    """One image as uint8 RGB at size x size, or None if the file is not a readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # a phone photo's EXIF orientation: upright, as a viewer shows it
            im = im.convert("RGB")  # grayscale, RGBA, CMYK, palette, 16-bit all become 8-bit RGB
            return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_folder(root: Path, size: int) -> Decoded:
    if not root.is_dir():
        raise UserError(f"dataset folder {str(root)!r} does not exist (expected one sub-folder per class)")
    classes = _class_folders(root)
    if set(classes) <= set(PART_FOLDERS) and any(p.is_dir() for c in classes for p in (root / c).iterdir()):
        return _load_parts(root, classes, size)  # never read train/ and test/ as two classes
    if len(classes) < 2:
        raise UserError(f"dataset folder {str(root)!r} has {len(classes)} class sub-folder(s); need at least 2")
    files, labels, ignored = _class_files(root, classes)
    return _decode(files, labels, [0] * len(files), classes, size, str(root), has_parts=False, ignored=ignored)


def _class_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int], int]:
    """Every image under each class folder, sub-folders included (as Keras' image_dataset_from_directory
    reads them): (files, labels, other files skipped for their suffix)."""
    files, labels, ignored = [], [], 0
    for label, name in enumerate(classes):
        found, others = image_files(root / name)
        if not found:
            raise UserError(f"class folder {str(root / name)!r} has no images")
        files += found
        labels += [label] * len(found)
        ignored += others
    return files, labels, ignored


def image_files(folder: Path) -> tuple[list[Path], int]:
    """(image files under `folder` at any depth, sorted; how many other files were passed over). Hidden files
    and folders (.ipynb_checkpoints, .DS_Store) stay out; a symlinked folder is read once, so a loop ends."""
    found, others, seen = [], 0, set()
    for here, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            folders[:] = []  # a symlink back to a folder already read
            continue
        seen.add(real)
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(here) / name)
            else:
                others += 1
    return sorted(found), others


def _load_parts(root: Path, parts: list[str], size: int) -> Decoded:
    """A pre-split folder: train/, val/ or validation/, test/, each holding the same class folders."""
    if "val" in parts and "validation" in parts:
        raise UserError(f"dataset folder {str(root)!r} has both val/ and validation/: keep one")
    if "train" not in parts:
        raise UserError(f"dataset folder {str(root)!r} has {'/, '.join(parts)}/ parts but no train/")
    classes = _class_folders(root / "train")
    if len(classes) < 2:
        raise UserError(f"class folders of {str(root / 'train')!r}: {len(classes)}; need at least 2")
    for part in parts:
        theirs = _class_folders(root / part)
        if theirs != classes:
            odd = sorted(set(theirs) ^ set(classes))[0]
            where = "only in" if odd in theirs else "missing from"
            raise UserError(f"dataset folder {str(root)!r}: class {odd!r} is {where} {part}/; every part needs the "
                            f"same class folders as train/ ({', '.join(classes)})")
    files, labels, given, ignored = [], [], [], 0
    for part in sorted(parts, key=PART_FOLDERS.get):
        found, found_labels, others = _class_files(root / part, classes)
        ignored += others
        files += found
        labels += found_labels
        given += [PART_FOLDERS[part]] * len(found)
    return _decode(files, labels, given, classes, size, str(root), has_parts=True, ignored=ignored)


def _load_csv(path: Path, size: int):
    """A header row, then path,label rows (further columns ignored); classes are the labels, sorted."""
    import csv

    if not path.is_file():
        raise UserError(f"dataset CSV {str(path)!r} does not exist (expected a header, then path,label rows)")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if line == 1 or not any(cell.strip() for cell in row):
                continue  # the header; blank lines
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise UserError(f"{path}: line {line}: expected path,label, got {','.join(row)!r}")
            image = Path(row[0].strip())
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise UserError(f"{path}: line {line}: image {str(image)!r} not found")
            rows.append((image, row[1].strip()))
    classes = sorted({label for _, label in rows})
    if len(classes) < 2:
        raise UserError(f"dataset CSV {str(path)!r} has {len(classes)} class label(s); need at least 2")
    index = {name: i for i, name in enumerate(classes)}
    files = [p for p, _ in rows]
    return _decode(files, [index[label] for _, label in rows], [0] * len(files), classes, size, str(path),
                   has_parts=False)


def _decode(files: list[Path], labels: list[int], parts: list[int], classes: list[str], size: int, what: str,
            has_parts: bool, ignored: int = 0) -> Decoded:
    """Decode the files once into the on-disk store (search/data/image_store.py), or map them from it.
    ignored: files passed over before decoding (not images by their suffix), for the data summary."""

    def rows():
        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes outside the GIL; a chunk at a time in memory
            for start in range(0, len(files), 256):
                chunk = files[start:start + 256]
                for i, image in enumerate(pool.map(lambda p: _read_image(p, size), chunk), start):
                    yield image, labels[i], parts[i], str(files[i])

    identity = ["files", file_facts(files), labels, parts if has_parts else None]
    decoded = stored(identity, len(files), size, classes, rows, what, has_parts)
    return decoded._replace(skipped=decoded.skipped + ignored)


def _load_tfds(name: str, size: int):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("tfds datasets need tensorflow-datasets: pip install tensorflow-datasets") from None
    try:
        ds, info = tfds.load(name, split="train", as_supervised=True, with_info=True)
    except Exception as exc:
        raise UserError(
            f"cannot load TFDS dataset {name!r} ({type(exc).__name__}): download it once on a machine with "
            f"network into ~/tensorflow_datasets/, or export it as an image folder and pass the folder"
        ) from exc
    import tensorflow as tf

    ds = ds.map(lambda x, y: (tf.cast(tf.image.resize(x, (size, size)), tf.uint8), y))

    def rows():  # streamed into the store, one image at a time: never the whole set in a Python list
        for i, (x, y) in enumerate(ds.as_numpy_iterator()):
            yield x, int(y), 0, f"{name} #{i}"

    return stored(["tfds", name, str(info.version)], info.splits["train"].num_examples, size,
                  info.features["label"].names, rows, f"tfds:{name}")


def split_indices(labels: np.ndarray, fractions, seed: int, parts: np.ndarray | None = None,
                  classes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices; every class gets at least one image in every part. `parts` (a
    pre-split folder's, search.data.image_store.Decoded): the given parts as they are; a part the folder does
    not have is cut from its train part, by the fractions. classes: names for messages (a folder, a CSV label)."""
    if parts is None:
        return _stratified(labels, fractions, seed, classes)
    given = [np.flatnonzero(parts == p) for p in (0, 1, 2)]
    missing = [len(g) == 0 for g in given]
    if missing[1] or missing[2]:
        carve = [fractions[0], fractions[1] if missing[1] else 0.0, fractions[2] if missing[2] else 0.0]
        cut = _stratified(labels[given[0]], [f / sum(carve) for f in carve], seed, classes)
        given = [given[0][cut[0]]] + [given[0][cut[p]] if missing[p] else given[p] for p in (1, 2)]
    return tuple(given)  # type: ignore[return-value]


def _stratified(labels: np.ndarray, fractions, seed: int, classes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(idx) * fractions[1]))
        n_test = int(round(len(idx) * fractions[2]))
        n_train = len(idx) - n_val - n_test
        if min(n for n, f in zip((n_train, n_val, n_test), fractions) if f > 0) < 1:
            name = repr(classes[int(label)]) if classes is not None else str(int(label))
            raise UserError(
                f"class {name} has {len(idx)} image(s): too few for the split {list(fractions)} "
                f"(every class needs at least one image in train, validation and test)")
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def dataset_split(spec: str, image_size: int, fractions, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data set's train/val/test indices: its own split where it comes split, else split_indices'."""
    decoded = load_images(spec, image_size)
    return split_indices(decoded.labels, fractions, seed, decoded.parts, decoded.classes)


def data_summary(spec: str, image_size: int, fractions, seed: int, folds: int = 1) -> str:
    """One line of what was read: images and classes, the smallest and largest class, files skipped, and the
    train / validation / test sizes (or the folds' over the non-test images)."""
    decoded = load_images(spec, image_size)
    counts = np.bincount(decoded.labels, minlength=len(decoded.classes))
    small, large = int(np.argmin(counts)), int(np.argmax(counts))
    train, val, test = dataset_split(spec, image_size, fractions, seed)
    skipped = f", {decoded.skipped} file(s) skipped" if decoded.skipped else ""
    if folds > 1:
        pool = len(train) + len(val)
        parts = f"{folds} folds of about {pool // folds} over {pool} non-test images, {len(test)} test"
    else:
        parts = f"{len(train)} train / {len(val)} validation / {len(test)} test"
    given = " (the folder's own train/val/test parts)" if decoded.parts is not None else ""
    sizes = f"{counts[small]} each" if counts[small] == counts[large] else \
        f"smallest {decoded.classes[small]!r}: {counts[small]}, largest {decoded.classes[large]!r}: {counts[large]}"
    return (f"data: {len(decoded.labels)} images in {len(decoded.classes)} classes from {spec} ({sizes})"
            f"{skipped}; {parts}{given}")


def load_split(spec: str, image_size: int, fractions, seed: int, part: str) -> Split:
    idx = dict(zip(("train", "val", "test"), dataset_split(spec, image_size, fractions, seed)))[part]
    return _rows_of(load_images(spec, image_size), idx)


def _rows_of(decoded: Decoded, idx: np.ndarray) -> Split:
    """Rows `idx` of a decoded data set, as a view."""
    return Split(ImageRows(decoded.images, idx, file=decoded.file), decoded.labels[idx])


@functools.lru_cache(maxsize=4)
def load_search_data(spec: str, image_size: int, fractions: tuple, seed: int) -> SearchData:
    """Train and validation parts only: the study has no handle on the test images."""
    classes = load_images(spec, image_size)[2]
    return SearchData(
        train=load_split(spec, image_size, fractions, seed, "train"),
        val=load_split(spec, image_size, fractions, seed, "val"),
        class_names=classes,
    )


def with_mirrors(split: Split) -> Split:
    """The split followed by its left-right mirror images (`augment: mirror`), as a view: nothing is copied,
    a mirrored row is flipped as it is read (search.data.rows).

    A fixed augmentation: unlike random layers, the frozen part's outputs for these images can be cached,
    so a trial costs about twice a plain one instead of every epoch going through the whole backbone.
    A fold (a split with an Origin) gets the mirrors of its base instead, so every fold shares them."""
    labels = np.concatenate([split.labels, split.labels])
    if split.origin is not None and len(split.origin.bases) == 1:
        base = split.origin.bases[0]
        index = np.concatenate([split.origin.index, split.origin.index + len(base)])
        return Split(split.images.with_mirrors(), labels, Origin((base, base.mirrored()), index))
    return Split(split.images.with_mirrors(), labels)


@functools.lru_cache(maxsize=2)
def load_pool(spec: str, image_size: int, fractions: tuple, seed: int) -> Split:
    """Every non-test image (train + validation of the split) as one array, in index order: what
    cross-validation folds and the final refit use. The test part is the same as load_split's."""
    train, val, _ = dataset_split(spec, image_size, fractions, seed)
    return _rows_of(load_images(spec, image_size), np.sort(np.concatenate([train, val])))


def make_dataset(split: Split, num_classes: int, batch_size: int, shuffle: bool, seed: int = 0):
    """A tf.data pipeline of (float32 pixels 0-255, one-hot labels), prefetching."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(split.images), split.labels))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)
