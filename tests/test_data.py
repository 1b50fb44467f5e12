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
    images, labels, classes = load_images(str(root), 24)
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
    images, _, _ = load_images(str(tmp_path), 16)
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
    images, labels, classes = load_images(write_csv(tmp_path, rows), 16)
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


def test_a_pre_split_folder_is_refused_never_read_as_classes_named_train_and_test(tmp_path):
    for part in ("train", "test"):
        make_folder(tmp_path / "d" / part, per_class=3, classes=("a", "b"))
    with pytest.raises(UserError, match="holds test/, train/ parts, each with class folders"):
        load_images(str(tmp_path / "d"), 16)
