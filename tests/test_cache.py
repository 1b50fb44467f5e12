"""The feature cache: same training as without it, keys that change with what the tensors depend on,
cuts that are exact for every backbone, pruning through cached phases, the full model returned."""

import dataclasses

import keras
import numpy as np
import optuna
import pytest
from optuna_integration import KerasPruningCallback

from search.config import TrialConfig
from search.data.datasets import load_search_data
from search.models.backbones import BACKBONES, backbone_layers, block_starts, build_backbone
from search.models.build import build_model, get_backbone_model, trainable_range_start
from search.training import cache
from search.training.cut import find_cut, head_model
from search.training.train import epoch_batches, train

BASE = TrialConfig(warmup_epochs=1, finetune_epochs=2, early_stopping_patience=0, dropout=0.0,
                   unfreeze_blocks=2, learning_rate=3e-3)


@pytest.fixture(scope="module")
def data():
    from search.models.tiny_cnn import pretrained_tiny_cnn

    pretrained_tiny_cnn()  # pretrain now if needed: it reseeds, which must not happen inside a compared trial
    return load_search_data("builtin:shapes", 32, (0.75, 0.10, 0.15), 0)


@pytest.fixture(autouse=True)
def empty_store():
    cache.STORE.clear()
    yield
    cache.STORE.clear()


def run(cfg, data, mode, **kw):
    keras.backend.clear_session()
    with cache.using(mode):
        result = train(cfg, data.train, data.val, data.class_names, **kw)
    return result, cache.last_plan


def assert_same_model(a, b, images, tolerance=1e-5):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(a.predict(images, verbose=0), b.predict(images, verbose=0), rtol=tolerance,
                               atol=tolerance)


CASES = [
    ({"freeze": "frozen"}, "features"),
    ({"freeze": "top_blocks"}, "cut"),
    ({"freeze": "top_blocks", "train_bn": True}, "cut"),  # BatchNorm above the cut trains, batch statistics
    ({"freeze": "frozen", "dropout": 0.3, "head_layers": 1, "head_batchnorm": True}, "features"),  # seeded dropout
    ({"freeze": "top_blocks", "augment": "mirror"}, "cut"),  # mirror images are fixed inputs: cached too
]


@pytest.mark.parametrize("changes, phase2", CASES)
@pytest.mark.slow
def test_cached_and_plain_training_make_the_same_first_updates(data, changes, phase2):
    """One update step per phase (one batch holds the whole training split): the cached path must compute what
    the plain one does. Exact up to float rounding on any CPU; several epochs are not (see below)."""
    n_train = len(data.train) * (2 if changes.get("augment") == "mirror" else 1)
    cfg = dataclasses.replace(BASE, **changes, batch_size=n_train, finetune_epochs=1)
    plain, plain_plan = run(cfg, data, "off")
    cached, plan = run(cfg, data, "memory")
    assert (plain_plan.phase1, plain_plan.phase2) == ("images", "images")
    assert (plan.phase1, plan.phase2) == ("features", phase2)
    assert [r["epoch"] for r in cached.curve] == [0, 1] == [r["epoch"] for r in plain.curve]
    assert_same_model(plain.model, cached.model, data.val.images[:40].astype("float32"))


@pytest.mark.parametrize("changes, phase2", CASES[2:])  # the richest features case and both richer cut cases
@pytest.mark.slow
def test_cached_training_ends_close_to_plain_training(data, changes, phase2):
    """Three epochs of many steps: the two paths batch the frozen part differently, so oneDNN rounds differently
    and the difference grows with every step (weights up to 7e-3 apart on another x86-64 CPU). Exact: the plan,
    the store, the epochs; within tolerances that hold on any CPU: the logs, predictions and accuracy. Every case
    is checked exactly by its first updates above; here only the three that add state across steps (BatchNorm
    statistics, seeded dropout masks, mirror images), which the two plain cases are subsets of."""
    cfg = dataclasses.replace(BASE, **changes)
    plain, plain_plan = run(cfg, data, "off")
    cached, plan = run(cfg, data, "memory")
    assert (plan.phase1, plan.phase2) == ("features", phase2)
    assert cache.STORE.stats["misses"] == 2 and len(cache.STORE) == (2 if phase2 == "features" else 4)
    # the same per-epoch logs, so callbacks (pruning, early stopping) see the same thing
    assert [r["epoch"] for r in cached.curve] == [0, 1, 2] == [r["epoch"] for r in plain.curve]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in cached.curve], [r[key] for r in plain.curve], atol=0.03)
    images = data.val.images.astype("float32")
    assert np.abs(plain.model.predict(images, verbose=0) - cached.model.predict(images, verbose=0)).max() < 0.1
    assert cached.metrics["accuracy"] == pytest.approx(plain.metrics["accuracy"], abs=0.03)  # 3 of 100 images
    assert cached.initial_accuracy == pytest.approx(plain.initial_accuracy, abs=0.02)  # same model: argmax ties aside
    assert cached.params_trainable == plain.params_trainable


@pytest.mark.slow
def test_later_trials_reuse_features_and_the_model_returned_is_the_full_model(data, tmp_path):
    cfg = dataclasses.replace(BASE, freeze="frozen", finetune_epochs=1)
    first, _ = run(cfg, data, "memory")
    second, _ = run(dataclasses.replace(cfg, seed=7, learning_rate=1e-2), data, "memory")
    assert cache.STORE.stats["misses"] == 2 and cache.STORE.stats["memory_hits"] == 2  # train and val features
    model = second.model
    assert tuple(model.input.shape) == (None, 32, 32, 3) and tuple(model.output.shape) == (None, 5)
    assert get_backbone_model(model).name == "tiny_cnn"
    # the full model on images computes what the head computed on the cached features
    [features] = [v["pool"] for v in cache.frozen_outputs(model, cache.last_plan, [data.val.images], 32)]
    images = data.val.images.astype("float32")
    np.testing.assert_allclose(model.predict(images, verbose=0), head_model(model).predict(features, verbose=0),
                               rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "m.keras")  # the sub-models built on its layers do not leak into the saved model
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert len(reloaded.layers) == len(model.layers)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)


class PruneFrom(optuna.pruners.BasePruner):
    def __init__(self, step):
        self.step = step

    def prune(self, study, trial):
        return trial.last_step is not None and trial.last_step >= self.step


@pytest.mark.parametrize("freeze, step", [("frozen", 0), ("top_blocks", 1)])  # 1: first step of phase 2
@pytest.mark.slow
def test_pruning_works_through_cached_phases(data, freeze, step):
    study = optuna.create_study(direction="maximize", pruner=PruneFrom(step))
    trial = study.ask()
    curve = []
    with pytest.raises(optuna.TrialPruned):
        run(dataclasses.replace(BASE, freeze=freeze), data, "memory",
            callbacks=[KerasPruningCallback(trial, "val_accuracy")], curve=curve)
    assert cache.last_plan.phase1 == "features" and cache.last_plan.phase2 in ("features", "cut")
    frozen_trial = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert sorted(frozen_trial.intermediate_values) == list(range(step + 1))
    assert [r["epoch"] for r in curve] == list(range(step + 1))
    assert frozen_trial.intermediate_values[step] == pytest.approx(curve[-1]["val_accuracy"])


def test_batches_depend_only_on_seed_and_epoch():
    x = np.arange(10, dtype="float32")[:, None]
    y = np.zeros(10, "int32")

    def batches(first, n):
        ds = epoch_batches(x, y, 2, 4, seed=3, first_epoch=first)
        return [b[0].numpy().ravel().tolist() for b in ds.take(n)]

    from_zero, from_two = batches(0, 9), batches(2, 3)
    assert from_zero[6:9] == from_two  # epochs of 3 batches: epoch 2 is the same wherever a fit starts
    assert sorted(sum(from_zero[:3], [])) == list(range(10))  # each epoch is a permutation
    assert from_zero[:3] != from_zero[3:6]  # reshuffled every epoch


# ------------------------------------------------------------------------------------------------ keys


def key_of(cfg, split_seed=0, size=None):
    size = size or cfg.image_size
    split = load_search_data(cfg.dataset, size, cfg.split, split_seed).train
    keras.backend.clear_session()
    model = build_model(dataclasses.replace(cfg, image_size=size), 5)
    return cache.feature_key(model, None, split.images)


@pytest.mark.slow
def test_keys_change_with_backbone_weights_size_split_and_preprocessing(monkeypatch):
    cfg = TrialConfig()
    base = key_of(cfg)
    assert key_of(cfg) == base  # rebuilt in a fresh session (a later trial): the same key, so reuse works
    assert key_of(dataclasses.replace(cfg, seed=5, dropout=0.4, head_layers=1)) == base  # head: irrelevant
    changed = {
        "backbone": key_of(dataclasses.replace(cfg, backbone="mobilenet", alpha=0.25, weights="none")),
        "weights": key_of(dataclasses.replace(cfg, weights="none")),
        "image size": key_of(cfg, size=40),
        "split": key_of(cfg, split_seed=1),
    }
    monkeypatch.setitem(BACKBONES, "tiny_cnn", dataclasses.replace(BACKBONES["tiny_cnn"], preprocess="torch"))
    changed["preprocessing"] = key_of(cfg)
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed


def test_store_is_bounded_least_recently_used_first():
    with cache.using("memory", max_mb=1):
        store = cache.FeatureStore()
        arrays = {k: np.full((400 * 256,), i, "float32") for i, k in enumerate("abc")}  # 400 KiB each
        store.put("a", arrays["a"])
        store.put("b", arrays["b"])
        assert store.get("a") is not None  # a is now the most recent
        store.put("c", arrays["c"])
        assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
        assert store.nbytes <= 2**20
        store.put("huge", np.zeros(2**19, "float32"))  # 2 MiB: over the budget, used but never kept
        assert store.get("huge") is None
        with pytest.raises(ValueError):
            arrays["a"][0] = 1.0  # shared between trials: read-only


@pytest.mark.slow
def test_disk_mode_persists_features_for_another_process(data, studies_home):
    cfg = dataclasses.replace(BASE, freeze="frozen", finetune_epochs=1)
    with cache.using("disk"):
        first, _ = run(cfg, data, "disk")
        files = sorted((studies_home / "_cache" / "features").glob("*.npy"))
        assert len(files) == 2  # train and validation features
        cache.STORE.clear()  # what a second worker starts with
        second, _ = run(cfg, data, "disk")
    assert cache.STORE.stats["disk_hits"] == 2 and cache.STORE.stats["misses"] == 0
    assert second.metrics == first.metrics


def test_auto_keeps_small_arrays_in_memory_and_maps_large_ones_from_a_bounded_folder(monkeypatch, studies_home):
    monkeypatch.setattr(cache, "AUTO_DISK_BYTES", 2**20)  # 1 MiB: the test's "large"
    folder = studies_home / "_cache" / "features"
    with cache.using("auto"):
        store = cache.FeatureStore()
        small = store.put("auto-small", np.ones(1000, "float32"))
        assert not isinstance(small, np.memmap) and not (folder / "auto-small.npy").exists()
        large = store.put("auto-large", np.full(2**19, 3.0, "float32"))  # 2 MiB
        assert isinstance(large, np.memmap) and (folder / "auto-large.npy").is_file() and large[0] == 3.0
        assert store.nbytes == small.nbytes  # a map costs the page cache, not the in-memory budget
        fresh = cache.FeatureStore()  # another process
        assert isinstance(fresh.get("auto-large"), np.memmap) and fresh.stats["disk_hits"] == 1
    monkeypatch.setattr(cache, "_override", cache.Settings("auto", 2**30, disk_bytes=5 * 2**20))
    store = cache.FeatureStore()
    for name in ("t1", "t2", "t3"):  # 2 MiB each into a 5 MiB folder: the least recently used go first
        store.put(f"auto-{name}", np.zeros(2**19, "float32"))
    assert {f.stem for f in folder.glob("*.npy")} == {"auto-t2", "auto-t3"}


def test_memory_mode_trains_on_images_when_the_cut_exceeds_the_budget_and_auto_does_not():
    from search.models.build import build_model

    cfg = dataclasses.replace(BASE, freeze="top_blocks", unfreeze_blocks=1)
    model = build_model(cfg, 5)
    with cache.using("memory", max_mb=0):
        assert cache.plan_trial(cfg, model, 10_000).phase2 == "images"
    with cache.using("auto", max_mb=0):
        assert cache.plan_trial(cfg, model, 10_000).phase2 == "cut"


# ------------------------------------------------------------------------------------------------ plan


def test_augmentation_turns_the_cache_off_for_the_whole_trial():
    for augment in ("light", "strong"):
        cfg = TrialConfig(augment=augment, freeze="top_blocks", unfreeze_blocks=1)
        plan = cache.plan_trial(cfg, build_model(cfg, 5), 100)
        assert (plan.phase1, plan.phase2) == ("images", "images") and "augment" in plan.note


def test_mirror_adds_each_training_image_flipped_left_right_once(data):
    from search.data.datasets import with_mirrors

    doubled = with_mirrors(data.train)
    n = len(data.train)
    assert len(doubled) == 2 * n and doubled.images.base is data.train.images.base  # a view: nothing copied
    np.testing.assert_array_equal(doubled.images[:n], data.train.images)
    np.testing.assert_array_equal(doubled.images[n:], data.train.images[:, :, ::-1])
    np.testing.assert_array_equal(doubled.labels, np.concatenate([data.train.labels, data.train.labels]))
    assert not np.array_equal(doubled.images[n:], data.train.images)  # the shapes are not all symmetric


def test_round_to_block_moves_a_layer_wise_cut_to_a_block_start():
    info = BACKBONES["mobilenet_v2"]
    cfg = TrialConfig(backbone="mobilenet_v2", alpha=0.35, weights="none", image_size=32, freeze="top_layers",
                      unfreeze_layers=12)
    model = build_model(cfg, 5)
    backbone = get_backbone_model(model)
    inside = trainable_range_start(info, backbone, cfg)
    assert inside not in block_starts(info, backbone)
    plan = cache.plan_trial(cfg, model, 100)
    assert plan.phase2 == "images" and "tensors cross" in plan.note  # a residual block is cut in two
    rounded = dataclasses.replace(cfg, round_to_block=True)
    start = trainable_range_start(info, backbone, rounded)
    assert start in block_starts(info, backbone)
    assert min(abs(s - inside) for s in block_starts(info, backbone)) == abs(start - inside)
    plan = cache.plan_trial(rounded, model, 100)
    assert plan.phase2 == "cut" and plan.cut.start == start


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.slow
def test_every_block_start_is_an_exact_cut(name):
    """Keras 3 builds the part above each block start from the intermediate tensor, and prefix + top
    computes what the whole backbone computes. Backbones with layers that are random during fit keep
    training on images (the plan says which layer)."""
    info = BACKBONES[name]
    alpha = info.alphas[0] if info.has_alpha else 1.0
    backbone = build_backbone(info, info.min_size, "none", alpha)
    x = np.random.default_rng(0).uniform(-1, 1, (2, info.min_size, info.min_size, 3)).astype("float32")
    expected = np.asarray(backbone(x, training=False))
    starts = block_starts(info, backbone)[1:]
    cuts = {}
    for start in starts:
        cuts[start], why = find_cut(backbone, start)
        assert cuts[start] is not None, f"{name} block at {start}: {why}"
    for start in (starts[0], starts[len(starts) // 2], starts[-1]):  # computing every one would be slow
        cut = cuts[start]
        below = keras.Model(backbone.input, cut.tensor)
        above = keras.Model(cut.tensor, backbone.output)
        assert {id(l) for l in above.layers[1:]} <= {id(l) for l in backbone_layers(backbone)}  # same objects
        np.testing.assert_allclose(np.asarray(above(below(x))), expected, rtol=1e-4, atol=1e-4)
    cfg = TrialConfig(backbone=name, alpha=alpha, weights="none", image_size=info.min_size)
    plan = cache.plan_trial(cfg, build_model(cfg, 3), 100)
    if name.startswith("efficientnet"):
        assert plan.phase1 == "images" and "_drop" in plan.note
    else:
        assert (plan.phase1, plan.phase2) == ("features", "features")


def test_cut_inside_a_residual_block_is_refused():
    info = BACKBONES["mobilenet_v2"]
    backbone = build_backbone(info, 32, "none", 0.35)
    names = [l.name for l in backbone_layers(backbone)]
    cut, why = find_cut(backbone, names.index("block_2_project"))  # block_2 adds its input back at the end
    assert cut is None and "2 tensors cross" in why


def test_bench_command_rejects_bad_input_with_one_line(tmp_path, capsys):
    from search.cli import main

    missing = str(tmp_path / "missing.h5")
    for args, message in [(["--weights", missing, "--backbone", "mobilenet_v2"], "does not exist"),
                          (["--weights", str(tmp_path)], "cannot tell which backbone"),
                          (["--epochs", "3", "--warmup-epochs", "3"], "--warmup-epochs must be in"),
                          (["--unfreeze-blocks", "9"], "exceeds tiny_cnn's 4 blocks"),
                          (["--memory", "--trials", "0"], "--trials must be at least 1")]:
        assert main(["bench", "--out", str(tmp_path / "out"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_bad_cache_setting_is_a_user_error(monkeypatch):
    from search.errors import UserError

    monkeypatch.setenv("TRANSFER_SEARCH_FEATURE_CACHE", "ram")
    with pytest.raises(UserError, match="TRANSFER_SEARCH_FEATURE_CACHE='ram'; valid: auto, memory, disk, off"):
        cache.settings()


@pytest.mark.parametrize("mode", ["memory", "off"])
@pytest.mark.slow
def test_validation_logs_are_what_keras_evaluate_computes_and_the_metrics_use_the_same_pass(data, mode):
    """Per-epoch validation runs through train.Validation's one traced pass, not fit(validation_data=...): its
    logs equal Keras' own evaluate of the model returned (same loss, same accuracy), on the cached path and on
    images, and the final metrics are that same pass's."""
    cfg = dataclasses.replace(BASE, label_smoothing=0.1, freeze="top_blocks")
    result, plan = run(cfg, data, mode)
    assert plan.phase2 == ("cut" if mode == "memory" else "images")
    last = result.curve[-1]
    onehot = keras.utils.to_categorical(data.val.labels, 5)
    result.model.compile(loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    loss, accuracy = result.model.evaluate(data.val.images.astype("float32"), onehot, batch_size=7, verbose=0)
    assert last["val_accuracy"] == pytest.approx(accuracy, abs=1.5 / len(data.val.labels))  # an argmax tie at most
    assert last["val_loss"] == pytest.approx(loss, rel=1e-3)
    assert result.metrics["accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-12)
    assert {"build", "features", "warmup", "finetune", "evaluate"} <= set(result.seconds_by_phase)


def test_large_frozen_outputs_go_to_disk_batch_by_batch_and_a_full_disk_keeps_them_in_memory(data, monkeypatch,
                                                                                              studies_home, capsys):
    from search.models.build import build_model

    cfg = dataclasses.replace(BASE, freeze="top_blocks", unfreeze_blocks=1)
    model = build_model(cfg, 5)
    plan = cache.plan_trial(cfg, model, len(data.train))
    with cache.using("memory"):
        cache.STORE.clear()
        [in_memory] = cache.frozen_outputs(model, plan, [data.train.images], 32)
    assert not any(isinstance(v, np.memmap) for v in in_memory.values())
    monkeypatch.setattr(cache, "AUTO_DISK_BYTES", 1024)  # every output of this tiny task counts as large
    with cache.using("auto"):
        cache.STORE.clear()
        [mapped] = cache.frozen_outputs(model, plan, [data.train.images], 32)
        for name, value in mapped.items():
            assert isinstance(value, np.memmap) and value.shape == in_memory[name].shape
            np.testing.assert_allclose(value, in_memory[name], rtol=1e-5, atol=1e-6)  # another batch split: close
        assert not list((studies_home / "_cache" / "features").glob(".*.tmp"))  # no half-written file left

        def refuse(*args, **kwargs):
            raise OSError(28, "No space left on device")

        cache.STORE.clear()
        monkeypatch.setattr(cache.FeatureStore, "folder", staticmethod(lambda: studies_home / "_cache" / "full"))
        monkeypatch.setattr("builtins.open", refuse)
        [kept] = cache.frozen_outputs(model, plan, [data.train.images], 32)
        monkeypatch.undo()
    assert "cannot persist features" in capsys.readouterr().out or "disk" in cache._announced
    for name, value in kept.items():
        assert not isinstance(value, np.memmap)
        np.testing.assert_allclose(value, in_memory[name], rtol=1e-5, atol=1e-6)
