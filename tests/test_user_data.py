"""A user's own data, names and caches (issue 26): what was read is said, outputs stay in the studies folder,
names and keys are checked, a damaged cache is rebuilt, an interrupt is one line, the objective has a name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from search.cli import main
from search.config import studies_dir
from search.data import datasets
from tests.conftest import write
from tests.test_failures import expect_user_error, image_folder, run_cli, stored, tiny_space  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def fresh_decodes():
    """load_images keeps a per-process cache: each test here decodes (or maps) its own folder afresh."""
    datasets.load_images.cache_clear()
    datasets.load_search_data.cache_clear()
    datasets.load_pool.cache_clear()
    yield
    datasets.load_images.cache_clear()
    datasets.load_search_data.cache_clear()
    datasets.load_pool.cache_clear()


def nested_folder(root):
    """Class a: 6 images at the top, 6 in more/, 6 in more/deeper/, 4 in a hidden .ipynb_checkpoints/ and one
    hidden file; class b: 18 images and a symlink back to itself (a loop); a notes.txt that is not an image."""
    image_folder(root, {"a": 6, "b": 18})
    image_folder(root / "a", {"more": 6})
    image_folder(root / "a" / "more", {"deeper": 6})
    image_folder(root / "a", {".ipynb_checkpoints": 4})
    Image.new("RGB", (8, 8)).save(root / "a" / ".hidden.png")
    os.symlink(root / "b", root / "b" / "loop")
    (root / "b" / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------- 1. sub-folders, data line


def test_images_in_sub_folders_of_a_class_are_read(tmp_path):
    root = nested_folder(tmp_path / "data")
    images, labels, classes = datasets.load_images(str(root), 32)[:3]
    assert classes == ("a", "b")  # the sub-folder is not a class, the hidden one is not read
    assert np.bincount(labels).tolist() == [18, 18]  # 6 + 6 + 6; the loop read once
    assert datasets.load_images(str(root), 32).skipped == 1  # notes.txt


def test_a_pre_split_folder_with_sub_folders_keeps_its_parts(tmp_path):
    root = tmp_path / "data"
    for part, n in (("train", 8), ("val", 3), ("test", 3)):
        image_folder(root / part, {"a": n, "b": n})
    image_folder(root / "train" / "a", {"extra": 2})
    decoded = datasets.load_images(str(root), 32)
    assert np.bincount(decoded.parts).tolist() == [18, 6, 6]
    assert [len(i) for i in datasets.dataset_split(str(root), 32, (0.75, 0.1, 0.15), 0)] == [18, 6, 6]


@pytest.mark.slow
def test_a_study_says_what_data_it_read(tmp_path, capsys):
    root = nested_folder(tmp_path / "data")
    image_folder(root, {"c": 12})
    storage = f"sqlite:///{tmp_path}/said.db"
    assert main(["study", "--space", str(tiny_space(tmp_path, name="said", dataset=root, weights="none")),
                 "--storage", storage]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
    assert lines == [f"data: 48 images in 3 classes from {root} (smallest 'c': 12, largest 'a': 18), 1 file(s) "
                     f"skipped; 35 train / 5 validation / 8 test"]


def test_the_data_line_gives_fold_sizes_when_trials_cross_validate(tmp_path):
    root = image_folder(tmp_path / "data", {"x": 20, "y": 20})
    line = datasets.data_summary(str(root), 32, (0.75, 0.1, 0.15), 0, folds=3)
    assert line == f"data: 40 images in 2 classes from {root} (20 each); 3 folds of about 11 over 34 non-test " \
                   f"images, 6 test"


# ------------------------------------------------------------------------- 2. outputs stay in studies/


@pytest.mark.slow
def test_outputs_never_land_beside_a_store_in_a_data_folder(tmp_path):
    root = image_folder(tmp_path / "flowers", {"a": 12, "b": 12})
    before = sorted(p.name for p in root.iterdir())
    storage = f"sqlite:///{root}/flowers.db"  # the store inside the image folder, as a user may point it
    assert main(["study", "--space", str(tiny_space(tmp_path, name="flowers", dataset=root, weights="none")),
                 "--storage", storage]) == 0
    after = {p.name for p in root.iterdir()} - set(before)
    assert after <= {"flowers.db", "flowers.db-wal", "flowers.db-shm"}, after  # the store, nothing else
    assert all(p.is_file() for p in root.iterdir() if p.name in after)
    assert any((studies_dir() / "flowers" / "artifacts").iterdir())  # the artifacts are in the studies folder
    assert datasets.load_images(str(root), 32).classes == ("a", "b")  # the next study still sees two classes


# ------------------------------------------------------------------------------------ 3. study names


@pytest.mark.parametrize("argv", [
    ["study", "--space", "{space}", "--name", "../../escape"],
    ["study", "--space", "{space}", "--name", "/tmp/escape"],
    ["workers", "-n", "1", "--space", "{space}", "--name", "../../escape", "--storage", "journal:///{tmp}/w.log"],
    ["export", "--study", "../../escape"],
])
def test_a_study_name_that_leaves_the_studies_folder_is_refused(argv, tmp_path, capsys):
    space = tiny_space(tmp_path, dataset="builtin:shapes")
    argv = [a.format(space=space, tmp=tmp_path) for a in argv]
    home = studies_dir()
    before = sorted(str(p) for p in home.parent.rglob("escape*"))
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "escape" in err[0], err
    assert sorted(str(p) for p in home.parent.rglob("escape*")) == before  # nothing written anywhere
    assert not (tmp_path / "w.log").exists()


# ---------------------------------------------------------------------------------- 4. duplicate keys


@pytest.mark.parametrize("text, message", [
    ("study: {name: base}\nparams:\n  optimizer: adam\n  dropout: 0.2\n  optimizer: sgd\n",
     "params.optimizer: given twice, at lines 3 and 5"),
    ("study:\n  name: base\n  n_trials: 2\n  n_trials: 5\nparams:\n  optimizer: adam\n",
     "study.n_trials: given twice, at lines 3 and 4"),
    ("params:\n  optimizer: adam\nparams:\n  dropout: 0.1\n", "params: given twice, at lines 1 and 3"),
])
def test_a_key_given_twice_is_refused_with_both_lines(text, message, tmp_path, capsys, stored):
    path = write(tmp_path / "twice.yaml", text)
    expect_user_error(["study", "--space", str(path)], capsys, stored, "twice.yaml", message)


# ------------------------------------------------------------------------------ 5. a class by its name


def test_a_class_too_small_is_named_as_the_user_wrote_it(tmp_path, capsys, stored):
    root = image_folder(tmp_path / "data", {"daisy": 20, "red rose": 2})
    expect_user_error(["study", "--space", str(tiny_space(tmp_path, dataset=root, weights="none"))], capsys, stored,
                      "class 'red rose' has 2 image(s): too few for the split")
    rows = "path,label\n" + "".join(f"daisy/{i}.png,flower {'A' if i < 18 else 'B'}\n" for i in range(20))
    csv = write(root / "labels.csv", rows)
    expect_user_error(["study", "--space", str(tiny_space(tmp_path, dataset=csv, weights="none"))], capsys, stored,
                      "class 'flower B' has 2 image(s)")


# ------------------------------------------------------------------------- 6. a damaged decoded store


def _entry(root) -> Path:
    """The decoded-image store entry of `root` at 32 px (decoded now if needed)."""
    folder = Path(datasets.load_images(str(root), 32).file).parent
    assert folder.parent == studies_dir() / "_cache" / "images"
    return folder


@pytest.mark.parametrize("damage", ["truncated images", "labels missing", "meta missing", "labels cut"])
def test_a_damaged_image_store_is_decoded_again_with_a_warning(damage, tmp_path, capsys):
    root = image_folder(tmp_path / "data", {"a": 7, "b": 5})
    first = datasets.load_images(str(root), 32)
    images, labels = np.array(first.images), first.labels.copy()
    folder = _entry(root)
    if damage == "truncated images":
        with open(folder / "images.u8", "r+b") as f:
            f.truncate(32 * 32 * 3 * 5)
    elif damage == "labels missing":
        (folder / "labels.npy").unlink()
    elif damage == "meta missing":
        (folder / "meta.json").unlink()
    else:
        np.save(folder / "labels.npy", labels[:3])
    datasets.load_images.cache_clear()
    capsys.readouterr()
    again = datasets.load_images(str(root), 32)
    out = capsys.readouterr().out
    assert "warning: decoded-image store" in out and "is damaged" in out and "decoding" in out, out
    assert len(out.strip().splitlines()) == 1
    assert np.array_equal(np.asarray(again.images), images) and np.array_equal(again.labels, labels)
    datasets.load_images.cache_clear()
    datasets.load_images(str(root), 32)  # the rebuilt entry is sound: mapped without a word
    assert capsys.readouterr().out == ""


def test_a_damaged_store_that_cannot_be_replaced_is_a_one_line_error_never_read(tmp_path, monkeypatch):
    from search.data import image_store
    from search.errors import UserError

    root = image_folder(tmp_path / "data", {"a": 7, "b": 5})
    folder = _entry(root)
    (folder / "labels.npy").unlink()
    datasets.load_images.cache_clear()

    def refused(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(image_store.os, "replace", refused)  # neither moved aside nor replaced
    with pytest.raises(UserError, match=r"is damaged \(labels.npy missing\) and cannot be replaced: delete it"):
        datasets.load_images(str(root), 32)


@pytest.mark.slow
def test_a_study_on_a_damaged_store_runs(tmp_path, capsys):
    root = image_folder(tmp_path / "data", {"a": 12, "b": 12})
    folder = _entry(root)
    with open(folder / "images.u8", "r+b") as f:
        f.truncate(100)
    datasets.load_images.cache_clear()
    storage = f"sqlite:///{tmp_path}/dmg.db"
    assert main(["study", "--space", str(tiny_space(tmp_path, name="dmg", dataset=root, weights="none")),
                 "--storage", storage]) == 0
    assert optuna.load_study(study_name="dmg", storage=storage).trials[0].state == optuna.trial.TrialState.COMPLETE


# ------------------------------------------------------------------------ 8. the objective has a name


@pytest.mark.slow
def test_every_new_study_names_its_objective(tmp_path):
    storage = f"sqlite:///{tmp_path}/named.db"
    assert main(["study", "--space", str(tiny_space(tmp_path, name="named")), "--storage", storage]) == 0
    assert optuna.load_study(study_name="named", storage=storage).metric_names == ["val_accuracy"]


@pytest.mark.slow
def test_a_resumed_study_without_a_name_gets_one(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/old.db"
    monkeypatch.setattr(optuna.Study, "set_metric_names", lambda self, names: None)  # as main did before
    assert main(["study", "--space", str(tiny_space(tmp_path, name="old")), "--storage", storage]) == 0
    assert optuna.load_study(study_name="old", storage=storage).metric_names is None
    monkeypatch.undo()
    assert main(["study", "--space", str(tiny_space(tmp_path, name="old")), "--storage", storage]) == 0
    study = optuna.load_study(study_name="old", storage=storage)
    assert study.metric_names == ["val_accuracy"] and len(study.trials) == 2
