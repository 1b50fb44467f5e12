"""Splits as views of the decoded array (search/data/rows.py): what a view reads, that nothing is copied."""

import numpy as np
import pytest
from PIL import Image

from search.data.datasets import load_images, load_split, subset, with_mirrors
from search.data.rows import ImageRows


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A 3-class folder of distinct random images, decoded into a store under tmp_path."""
    monkeypatch.setenv("TRANSFER_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRANSFER_SEARCH_IMAGE_CACHE", "disk")
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c in "abc":
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    load_images.cache_clear()
    yield str(root)
    load_images.cache_clear()


def test_a_split_is_a_view_of_the_stored_file_not_a_copy(store):
    decoded = load_images(store, 12)
    train = load_split(store, 12, (0.5, 0.25, 0.25), 0, "train")
    assert train.images.base is decoded.images and train.images.file == decoded.file
    assert train.images.nbytes == len(train) * 12 * 12 * 3 and train.images.shape == (len(train), 12, 12, 3)
    assert np.array_equal(np.asarray(train.images), decoded.images[train.images.index])
    assert np.array_equal(train.labels, decoded.labels[train.images.index])


def test_file_reads_equal_the_array_for_any_rows_repeats_and_flips(store):
    decoded = load_images(store, 12)
    rng = np.random.default_rng(1)
    index = rng.integers(0, len(decoded.images), 40)  # unsorted, with repeats and runs
    index[5:12] = np.arange(3, 10)
    flipped = rng.random(40) < 0.5
    from_file = ImageRows(decoded.images, index, flipped, decoded.file)
    in_memory = ImageRows(np.array(decoded.images), index, flipped)
    expected = np.array(decoded.images)[index]
    expected[flipped] = expected[flipped][:, :, ::-1]
    for view in (from_file, in_memory):
        assert np.array_equal(np.asarray(view), expected)
        positions = rng.permutation(40)[:13]
        assert np.array_equal(view[positions], expected[positions])
        assert np.array_equal(view[3:17:2], expected[3:17:2]) and np.array_equal(view[7], expected[7])
        assert np.array_equal(np.stack(list(view)), expected)


def test_mirrors_and_subsets_compose_as_views(store):
    train = load_split(store, 12, (0.5, 0.25, 0.25), 0, "train")
    plain = np.asarray(train.images)
    doubled = with_mirrors(train)
    n = len(train)
    assert doubled.images.base is train.images.base  # nothing copied
    assert np.array_equal(doubled.images[:n], plain) and np.array_equal(doubled.images[n:], plain[:, :, ::-1])
    fold = subset(train, np.array([4, 0, 2]))
    mirrored_fold = with_mirrors(fold)
    assert np.array_equal(np.asarray(mirrored_fold.images), np.concatenate([plain[[4, 0, 2]],
                                                                            plain[[4, 0, 2]][:, :, ::-1]]))
    base, mirrors = mirrored_fold.origin.bases  # the fold's frozen outputs come from its base and its mirrors
    rows = np.concatenate([np.asarray(base), np.asarray(mirrors)])[mirrored_fold.origin.index]
    assert np.array_equal(rows, np.asarray(mirrored_fold.images))


def test_the_digest_names_the_rows_not_the_object(store):
    decoded = load_images(store, 12)
    a = ImageRows(decoded.images, [0, 1, 2], file=decoded.file)
    assert a.digest() == ImageRows(decoded.images, [0, 1, 2], file=decoded.file).digest()
    assert a.digest() != ImageRows(decoded.images, [0, 1, 3], file=decoded.file).digest()
    assert a.digest() != a.mirrored().digest() != a.with_mirrors().digest()
    copy = np.array(decoded.images)
    assert ImageRows(copy, [0, 1]).digest() == ImageRows(copy.copy(), [0, 1]).digest()  # in memory: the bytes
    changed = copy.copy()
    changed[0, 0, 0, 0] ^= 1
    assert ImageRows(changed, [0, 1]).digest() != ImageRows(copy, [0, 1]).digest()


def test_reads_that_stop_short_are_continued(store, monkeypatch):
    import os

    decoded = load_images(store, 12)
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: real(fd, [buffers[0][:100]], offset))  # 100 B a call
    view = ImageRows(decoded.images, np.arange(len(decoded.images)), file=decoded.file)
    assert np.array_equal(np.asarray(view), np.array(decoded.images))
