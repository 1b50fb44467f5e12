"""Image folders of every kind load as RGB uint8; splits are deterministic, stratified and disjoint."""

import numpy as np
import pytest
from PIL import Image

from search.data.datasets import load_images, load_search_data, load_split, split_indices
from search.errors import UserError


def make_folder(root, per_class=10, classes=("daisy", "red rose", "tulipán")):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    return root


def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [40, 20, 100, 13])
    a = split_indices(labels, (0.75, 0.10, 0.15), seed=3)
    b = split_indices(labels, (0.75, 0.10, 0.15), seed=3)
    c = split_indices(labels, (0.75, 0.10, 0.15), seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    train, val, test = a
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    assert len(train) + len(val) + len(test) == len(labels)
    for label, count in zip(range(4), [40, 20, 100, 13]):  # every class in every part, in proportion
        assert abs(np.sum(labels[test] == label) - 0.15 * count) <= 1
        assert np.sum(labels[val] == label) >= 1


def test_split_refuses_a_class_too_small_for_every_part():
    with pytest.raises(UserError, match="class 1 has 2 image"):
        split_indices(np.array([0] * 30 + [1] * 2), (0.75, 0.10, 0.15), seed=0)


def test_folder_with_odd_images_loads_as_rgb(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    odd = root / "daisy"
    Image.new("L", (40, 40), 128).save(odd / "gray.png")
    Image.new("RGBA", (40, 40), (10, 20, 30, 0)).save(odd / "rgba.png")
    Image.new("CMYK", (40, 40), (0, 50, 100, 0)).save(odd / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(odd / "sixteen.png")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(odd / "tiny.png")
    Image.new("RGB", (3000, 2000), (0, 255, 0)).save(odd / "large.jpg")
    (odd / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (odd / "notes.txt").write_text("not an image")
    images, labels, classes = load_images(str(root), 24)[:3]
    assert classes == ("daisy", "red rose", "tulipán")
    assert images.shape == (30 + 6, 24, 24, 3) and images.dtype == np.uint8
    assert np.sum(labels == 0) == 16  # 10 + six odd images; the broken one and the .txt are skipped
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    assert load_images(str(root), 24) is load_images(str(root), 24)  # decoded once per process


def test_search_data_never_contains_the_test_part(tmp_path):
    root = str(make_folder(tmp_path / "d", per_class=20))
    data = load_search_data(root, 16, (0.75, 0.10, 0.15), 0)
    test = load_split(root, 16, (0.75, 0.10, 0.15), 0, "test")
    assert len(data.train) + len(data.val) + len(test) == 60
    assert not {im.tobytes() for im in test.images} & {im.tobytes() for im in data.train.images}


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "has 0 class sub-folder"),
    ("one_class", "has 1 class sub-folder"),
    ("empty_class", "has no images"),
])
def test_bad_folders_are_user_errors(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        make_folder(root / "x", classes=("only",))
        root = root / "x"
    if layout == "empty_class":
        make_folder(root, classes=("a", "b"))
        (root / "c").mkdir()
    with pytest.raises(UserError, match=message):
        load_images(str(root), 16)


def test_unknown_builtin_dataset():
    with pytest.raises(UserError, match="unknown built-in dataset 'flowers'; valid: shapes-source, shapes"):
        load_images("builtin:flowers", 32)


def test_exif_orientation_is_applied_as_a_viewer_shows_the_photo(tmp_path):
    """A phone stores a portrait shot sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half of the stored pixels red, right half blue
    stored[:, 32:] = (0, 0, 255)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(stored).save(tmp_path / name / f"{i}.jpg", quality=95, exif=exif)
    images = load_images(str(tmp_path), 16).images
    top, bottom = images[0, :4].reshape(-1, 3).mean(0), images[0, -4:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is the viewed top
    assert bottom[2] > 200 and bottom[0] < 60


def write_csv(tmp_path, rows, header="path,label"):
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_a_csv_of_path_and_label_loads_like_a_folder(tmp_path):
    folder = make_folder(tmp_path / "d", per_class=4, classes=("a", "b", "c"))  # the CSV names the labels
    rows = [f"{p.relative_to(tmp_path).as_posix()},{'cat' if p.parent.name == 'a' else 'dog'}"
            for p in sorted(folder.rglob("*.jpg"))]
    images, labels, classes = load_images(write_csv(tmp_path, rows), 16)[:3]
    assert classes == ("cat", "dog") and images.shape == (12, 16, 16, 3)
    assert list(labels).count(0) == 4 and list(labels).count(1) == 8


@pytest.mark.parametrize("rows, message", [
    (["d/a/0.jpg"], "line 2: expected path,label"),
    (["d/a/0.jpg,cat", "d/a/missing.jpg,dog"], "line 3: image '.*missing.jpg' not found"),
    (["d/a/0.jpg,cat", "d/a/1.jpg,cat"], "has 1 class label"),
])
def test_a_bad_csv_is_a_one_line_error_naming_the_line(tmp_path, rows, message):
    make_folder(tmp_path / "d", per_class=4, classes=("a", "b", "c"))
    with pytest.raises(UserError, match=message):
        load_images(write_csv(tmp_path, rows), 16)
    with pytest.raises(UserError, match="does not exist"):
        load_images(str(tmp_path / "nowhere.csv"), 16)


def pixels(split) -> set:
    return {im.tobytes() for im in split.images}


def test_a_pre_split_folder_gives_its_own_split_and_the_study_never_sees_its_test_part(tmp_path):
    counts = {"train": 8, "validation": 3, "test": 4}
    parts = {part: make_folder(tmp_path / "d" / part, per_class=n, classes=("a", "b")) for part, n in counts.items()}
    for part, n in counts.items():  # each part's images differ from the others' (make_folder's rng restarts)
        for cls in ("a", "b"):
            for i in range(n):
                Image.fromarray(np.full((20, 30, 3), {"train": 10, "validation": 120, "test": 240}[part] + i,
                                        np.uint8)).save(parts[part] / cls / f"{i}.jpg")
    root = str(tmp_path / "d")
    assert load_images(root, 16).classes == ("a", "b")  # never classes named train and test
    data = load_search_data(root, 16, (0.5, 0.25, 0.25), 0)  # the fractions do not apply: the folder is split
    test = load_split(root, 16, (0.5, 0.25, 0.25), 0, "test")
    assert (len(data.train), len(data.val), len(test)) == (16, 6, 8)
    means = lambda split: {int(round(im.mean())) for im in split.images}  # noqa: E731
    assert max(means(data.train)) < 100 and min(means(test)) > 200 and means(data.val) <= set(range(100, 200))
    assert not pixels(test) & (pixels(data.train) | pixels(data.val))


def test_a_pre_split_folder_without_val_cuts_it_from_train_and_keeps_test_as_given(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=12, classes=("a", "b"))
    make_folder(tmp_path / "d" / "test", per_class=5, classes=("a", "b"))
    root = str(tmp_path / "d")
    data = load_search_data(root, 16, (0.75, 0.25, 0.0), 0)
    test = load_split(root, 16, (0.75, 0.25, 0.0), 0, "test")
    assert (len(data.train), len(data.val), len(test)) == (18, 6, 10)
    assert set(data.val.labels) == {0, 1}


@pytest.mark.parametrize("layout, message", [
    ({"train": ("a", "b"), "test": ("a", "c")}, r"class 'b' is missing from test/.*same class folders as train/"),
    ({"train": ("a", "b"), "test": ("a", "b", "c")}, r"class 'c' is only in test/"),
    ({"train": ("a", "b"), "val": ("a", "b"), "validation": ("a", "b")}, r"both val/ and validation/"),
    ({"validation": ("a", "b"), "test": ("a", "b")}, r"no train/"),
])
def test_a_wrong_pre_split_folder_is_a_one_line_error_naming_the_part(tmp_path, layout, message):
    for part, classes in layout.items():
        make_folder(tmp_path / "d" / part, per_class=3, classes=classes)
    with pytest.raises(UserError, match=message) as error:
        load_images(str(tmp_path / "d"), 16)
    assert "\n" not in str(error.value)


def test_decoded_images_are_stored_once_mapped_by_later_processes_and_redone_when_a_file_changes(tmp_path,
                                                                                                 monkeypatch):
    from search.data import datasets

    root = make_folder(tmp_path / "d", per_class=4, classes=("a", "b"))
    first = load_images(str(root), 16)
    assert isinstance(first.images, np.memmap)  # a map of the stored file, not a decoded copy
    load_images.cache_clear()  # as a new process
    decoded = []
    real = datasets._read_image
    monkeypatch.setattr(datasets, "_read_image", lambda path, size: decoded.append(path) or real(path, size))
    again = load_images(str(root), 16)
    assert decoded == [] and np.array_equal(again.images, first.images)  # mapped, not decoded again
    changed = root / "a" / "0.jpg"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(changed)
    load_images.cache_clear()
    fresh = load_images(str(root), 16)
    assert len(decoded) == 8  # the key changed with the file: everything decoded again, nothing stale
    assert fresh.images[0].max() == 0 and not np.array_equal(fresh.images, first.images)


def test_the_memory_mode_decodes_into_ram_without_writing_a_store(tmp_path, monkeypatch):
    from search.data import image_store

    monkeypatch.setenv("TRANSFER_SEARCH_IMAGE_CACHE", "memory")
    monkeypatch.setattr(image_store, "folder_of", lambda key: (_ for _ in ()).throw(AssertionError("disk")))
    root = make_folder(tmp_path / "m", per_class=3, classes=("a", "b"))
    decoded = load_images(str(root), 16)
    assert not isinstance(decoded.images, np.memmap) and decoded.images.shape == (6, 16, 16, 3)
    monkeypatch.setenv("TRANSFER_SEARCH_IMAGE_CACHE", "ram")
    load_images.cache_clear()
    with pytest.raises(UserError, match="TRANSFER_SEARCH_IMAGE_CACHE='ram'; valid: disk, memory"):
        load_images(str(root), 16)


def test_a_tfds_set_streams_into_the_store_once(monkeypatch):
    """TFDS without RAM: the images go one at a time into the on-disk store, and a later process maps it."""
    import sys
    import types

    import tensorflow as tf

    iterated = []
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (6, 20, 20, 3), dtype=np.uint8)

    def load(name, split, as_supervised, with_info):
        assert (split, as_supervised, with_info) == ("train", True, True)
        ds = tf.data.Dataset.from_tensor_slices((pixels, np.array([0, 1, 0, 1, 0, 1]))).map(
            lambda x, y: (tf.ensure_shape(tf.numpy_function(lambda v: iterated.append(1) or v, [x], tf.uint8),
                                          [20, 20, 3]), y))
        info = types.SimpleNamespace(version="1.0.0", splits={"train": types.SimpleNamespace(num_examples=6)},
                                     features={"label": types.SimpleNamespace(names=["cat", "dog"])})
        return ds, info

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(load=load))
    first = load_images("tfds:fake_pets", 16)
    assert isinstance(first.images, np.memmap) and first.images.shape == (6, 16, 16, 3)
    assert first.classes == ("cat", "dog") and list(first.labels) == [0, 1, 0, 1, 0, 1] and len(iterated) == 6
    load_images.cache_clear()  # as a new process
    again = load_images("tfds:fake_pets", 16)
    assert len(iterated) == 6 and np.array_equal(again.images, first.images)  # mapped, not streamed again
