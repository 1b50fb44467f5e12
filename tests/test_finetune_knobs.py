"""The fine-tuning knobs of issue 18: layer-wise learning rates, weight decay for every optimizer, L2-SP,
augmentation policies and label mixing; each conditional, validated, and settable with retrain --set."""

import dataclasses

import keras
import numpy as np
import optuna
import pytest
import tensorflow as tf
import yaml

from search.config import TrialConfig
from search.data.datasets import load_search_data
from search.deliver.retrain import load_config
from search.errors import UserError
from search.models.augment import AUGMENTATIONS, MIXES, cutmix, mixup
from search.models.backbones import backbone_layers, block_starts, get_backbone
from search.models.build import apply_freezing, build_model, get_backbone_model, layer_rates, pull_to_start, release
from search.models.optimizers import OPTIMIZERS, make_optimizer, unrated
from search.space import load_space, sample
from search.training import cache
from search.training.train import epoch_batches, train

TOP_BLOCKS = TrialConfig(freeze="top_blocks", unfreeze_blocks=2, warmup_epochs=1, finetune_epochs=2,
                         early_stopping_patience=0)


def two_blocks():
    """Two one-weight 'blocks': a kernel each, the same known gradient for both."""
    a, b = keras.Variable(np.ones((3,), np.float32), name="a"), keras.Variable(np.ones((3,), np.float32), name="b")
    return a, b, np.array([0.5, -2.0, 1.0], np.float32)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_layer_rates_give_each_block_the_update_of_its_own_rate_with_every_optimizer(name):
    cfg = TrialConfig(optimizer=name, learning_rate=0.1)
    a, b, grad = two_blocks()
    rated = make_optimizer(cfg, rates={a.path: 0.25})
    for _ in range(2):  # two steps: the moments (Adam, RMSprop, momentum) carry over as well
        rated.apply([tf.constant(grad), tf.constant(grad)], [a, b])
    expected = {}
    for var, lr in (("a", 0.025), ("b", 0.1)):  # the plain optimizer at the block's own rate
        ref = keras.Variable(np.ones((3,), np.float32), name=var)
        plain = make_optimizer(dataclasses.replace(cfg, learning_rate=lr))
        for _ in range(2):
            plain.apply([tf.constant(grad)], [ref])
        expected[var] = ref.numpy()
    np.testing.assert_allclose(a.numpy(), expected["a"], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), expected["b"], rtol=1e-6)
    assert not np.allclose(a.numpy(), b.numpy())  # the rates really differ
    assert type(unrated(rated)) is type(make_optimizer(cfg))  # what a saved model carries loads as plain Keras


def test_layer_rates_decay_by_block_depth_and_leave_the_head_at_the_full_rate():
    cfg = dataclasses.replace(TOP_BLOCKS, layer_decay=0.5)
    model = build_model(cfg, 5)
    apply_freezing(model, cfg)
    rates = layer_rates(model, cfg)
    backbone = get_backbone_model(model)
    own = backbone_layers(backbone)
    starts = block_starts(get_backbone(cfg.backbone), backbone)
    top, below = own[starts[-1]], own[starts[-2]]
    assert all(rates[v.path] == 0.5 for v in top.trainable_weights) and top.trainable_weights
    assert all(rates[v.path] == 0.25 for v in below.trainable_weights) and below.trainable_weights
    head = model.get_layer("predictions")
    assert not any(v.path in rates for v in head.trainable_weights)
    assert set(rates) == {v.path for v in backbone.trainable_weights}  # frozen layers are not listed
    assert layer_rates(model, dataclasses.replace(cfg, layer_decay=1.0)) == {}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_weight_decay_is_decoupled_for_every_optimizer(name):
    cfg = TrialConfig(optimizer=name, learning_rate=0.1, weight_decay=0.5)
    var = keras.Variable(np.full((3,), 2.0, np.float32))
    make_optimizer(cfg).apply([tf.zeros(3)], [var])  # no gradient: only the decay moves the weight
    np.testing.assert_allclose(var.numpy(), 2.0 - 2.0 * 0.1 * 0.5, rtol=1e-6)
    off = keras.Variable(np.full((3,), 2.0, np.float32))
    make_optimizer(dataclasses.replace(cfg, weight_decay=0.0)).apply([tf.zeros(3)], [off])
    np.testing.assert_array_equal(off.numpy(), 2.0)


def test_l2sp_adds_half_its_strength_times_the_squared_distance_to_the_start_and_is_removed():
    cfg = TOP_BLOCKS
    model = build_model(cfg, 5)
    apply_freezing(model, cfg)
    pulled = pull_to_start(model, 0.2)
    assert pulled and {id(v) for v in pulled} == {id(v) for v in get_backbone_model(model).trainable_weights}
    moved = pulled[0]
    moved.assign(moved.numpy() + 0.1)
    penalty = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    assert penalty == pytest.approx(0.5 * 0.2 * 0.01 * np.prod(moved.shape), rel=1e-4)
    release(pulled)
    assert not model.losses


def _distance_to_start(change: dict) -> float:
    cfg = dataclasses.replace(TOP_BLOCKS, learning_rate=0.01, finetune_epochs=3, **change)
    data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    start = build_model(cfg, len(data.class_names))
    result = train(cfg, data.train, data.val, data.class_names)
    assert cache.last_plan.phase2 == "cut"  # the penalty acts on the cached sub-model too
    assert not result.model.losses  # the returned model carries no penalty
    return sum(float(np.sum((w1 - w0) ** 2)) for w1, w0 in
               zip(get_backbone_model(result.model).get_weights(), get_backbone_model(start).get_weights()))


@pytest.mark.slow
def test_a_strong_l2sp_keeps_the_fine_tuned_backbone_near_its_pretrained_weights():
    assert _distance_to_start({"l2sp": 100.0}) < 0.5 * _distance_to_start({})


def test_mixup_mixes_inputs_and_labels_with_one_weight_per_example_on_any_rank():
    x = tf.constant(np.arange(24, dtype=np.float32).reshape(4, 6))  # pooled features: 2-D
    y = tf.one_hot([0, 1, 2, 3], 4)
    seed = tf.constant([7, 3], tf.int64)
    mx, my = mixup(x, y, 0.4, seed)
    lam = my.numpy()[np.arange(4), [0, 1, 2, 3]]
    np.testing.assert_allclose(my.numpy().sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mx.numpy(), lam[:, None] * x.numpy() + (1 - lam[:, None]) * x.numpy()[::-1], rtol=1e-5)
    assert len(set(np.round(lam, 6))) > 1  # per example
    np.testing.assert_array_equal(mixup(x, y, 0.4, seed)[0].numpy(), mx.numpy())  # stateless: same key, same mix
    assert not np.allclose(mixup(x, y, 0.4, seed + 1)[0].numpy(), mx.numpy())


def test_cutmix_labels_mix_by_the_share_of_pasted_pixels():
    x = tf.constant(np.stack([np.full((16, 16, 3), v, np.float32) for v in (0.0, 1.0, 2.0, 3.0)]))
    y = tf.one_hot([0, 1, 2, 3], 4)
    for key in range(5):
        mx, my = cutmix(x, y, 1.0, tf.constant([key, 1], tf.int64))
        pasted = float(np.mean(mx.numpy()[0, :, :, 0] == 3.0))  # image 0 gets image 3's pixels inside the box
        assert my.numpy()[0, 3] == pytest.approx(pasted, abs=1e-6)
        assert my.numpy()[0, 0] == pytest.approx(1 - pasted, abs=1e-6)


@pytest.mark.slow
def test_mixed_batches_are_reproducible_and_only_the_training_batches_are_mixed():
    cfg = dataclasses.replace(TOP_BLOCKS, mix="mixup", mix_alpha=0.4)
    data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    args = (data.train.images, data.train.labels, 5, 32, 3, 0, "mixup", 0.4)
    first = [b for _, b in zip(range(3), epoch_batches(*args))]
    again = [b for _, b in zip(range(3), epoch_batches(*args))]
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert np.min(np.max(first[0][1].numpy(), axis=1)) < 0.99  # soft labels: mixed
    result = train(cfg, data.train, data.val, data.class_names)
    # the validation logs are the returned model's own accuracy on the untouched validation images
    predicted = np.argmax(result.model.predict(data.val.images.astype(np.float32), verbose=0), axis=1)
    assert result.curve[-1]["val_accuracy"] == pytest.approx(np.mean(predicted == data.val.labels), abs=1e-6)


def test_feature_mixup_keeps_the_cache_and_image_mixes_do_not():
    assert MIXES["feature_mixup"].cacheable and not MIXES["mixup"].cacheable and not MIXES["cutmix"].cacheable
    data = load_search_data(TOP_BLOCKS.dataset, TOP_BLOCKS.image_size, TOP_BLOCKS.split, TOP_BLOCKS.split_seed)
    train(dataclasses.replace(TOP_BLOCKS, mix="feature_mixup", finetune_epochs=1), data.train, data.val,
          data.class_names)
    assert (cache.last_plan.phase1, cache.last_plan.phase2) == ("features", "cut")


@pytest.mark.parametrize("name", ["randaugment", "augmix", "erasing"])
def test_random_policies_change_images_in_training_only(name):
    cfg = TrialConfig(augment=name, seed=1)
    entry = AUGMENTATIONS[name]
    assert not entry.cacheable and not entry.tflite_safe
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    out_train, out_infer = images, images
    for layer in entry.layers(cfg):
        out_train, out_infer = layer(out_train, training=True), layer(out_infer, training=False)
    assert not np.allclose(keras.ops.convert_to_numpy(out_train), images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_infer), images)
    assert np.all((keras.ops.convert_to_numpy(out_train) >= -1e-3) & (keras.ops.convert_to_numpy(out_train) <= 255.01))


def _sampled(space_overrides, n=40):
    space = load_space("spaces/default.yaml", space_overrides)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample(trial, space)))
        study.tell(trial, 0.0)
    return out


def test_each_knob_is_sampled_only_where_it_means_something():
    for trial, cfg in _sampled(["layer_decay={low: 0.5, high: 1.0}", "l2sp={low: 0.001, high: 0.1, log: true}",
                                "mix={choices: [none, mixup, feature_mixup]}", "mix_alpha={low: 0.1, high: 0.4}",
                                "augment={choices: [none, randaugment]}", "randaugment_ops={low: 1, high: 3}",
                                "randaugment_magnitude={low: 0.1, high: 0.9}", "weight_decay={choices: [0.0, 0.01]}"]):
        trains = cfg.freeze != "frozen"
        assert ("layer_decay" in trial.params) == trains and ("l2sp" in trial.params) == trains
        assert ("mix_alpha" in trial.params) == (cfg.mix != "none")
        assert ("randaugment_ops" in trial.params) == ("randaugment_magnitude" in trial.params) == \
            (cfg.augment == "randaugment")
        assert "weight_decay" in trial.params  # every optimizer's
        if not trains:
            assert (cfg.layer_decay, cfg.l2sp) == (1.0, 0.0)  # the defaults, which cost nothing


@pytest.mark.parametrize("override, message", [
    ("layer_decay=1.5", "params.layer_decay: 1.5 is out of bounds"),
    ("l2sp=-1", r"params.l2sp: -1(\.0)? is out of bounds"),
    ("mix=blend", "mix: .*valid: none, mixup, cutmix, feature_mixup"),
    ("mix_alpha=0", r"params.mix_alpha: 0(\.0)? is out of bounds"),
    ("augment=autoaugment", "augment: .*randaugment"),
    ("randaugment_magnitude=2", r"params.randaugment_magnitude: 2(\.0)? is out of bounds"),
    ("weight_decay=-0.1", "params.weight_decay: -0.1 is out of bounds"),
])
def test_a_bad_knob_is_a_one_line_error(override, message):
    with pytest.raises(UserError, match=message) as error:
        load_space("spaces/default.yaml", [override])
    assert "\n" not in str(error.value)


def test_retrain_set_changes_each_knob(tmp_path):
    path = tmp_path / "best.yaml"
    fixed = {**TOP_BLOCKS.to_dict()}
    path.write_text(yaml.safe_dump({"study": {"name": "knobs"}, "params": fixed}))
    changes = {"layer_decay": 0.7, "l2sp": 0.01, "weight_decay": 0.004, "mix": "cutmix", "mix_alpha": 1.0,
               "augment": "randaugment", "randaugment_ops": 3, "randaugment_magnitude": 0.3, "lr_schedule": "cosine"}
    _, cfg = load_config(path, [f"{k}={v}" for k, v in changes.items()])
    assert {k: getattr(cfg, k) for k in changes} == changes


def test_the_flowers_ablation_turns_back_each_knob_that_is_not_plain_one_at_a_time():
    from search.bench.flowers import PLAIN, ablations

    winner = {**TrialConfig().to_dict(), "layer_decay": 0.8, "mix": "feature_mixup", "augment": "mirror"}
    assert ablations(winner) == {"winner, augment=none (was mirror)": "augment=none",
                                 "winner, mix=none (was feature_mixup)": "mix=none",
                                 "winner, layer_decay=1.0 (was 0.8)": "layer_decay=1.0"}
    assert ablations(TrialConfig().to_dict()) == {}  # the defaults are the plain values: they cost nothing
    assert all(TrialConfig().to_dict()[k] == v for k, v in PLAIN.items())


def test_large_inputs_stream_from_the_array_in_the_very_same_batches(monkeypatch):
    from search.training import train as train_module

    data = load_search_data(TOP_BLOCKS.dataset, TOP_BLOCKS.image_size, TOP_BLOCKS.split, TOP_BLOCKS.split_seed)
    args = (data.train.images, data.train.labels, 5, 32, 3, 0, "cutmix", 1.0)
    constant = [b for _, b in zip(range(4), epoch_batches(*args))]
    monkeypatch.setattr(train_module, "STREAM_BYTES", 0)  # every input streams
    streamed = [b for _, b in zip(range(4), train_module.epoch_batches(*args))]
    for (x1, y1), (x2, y2) in zip(constant, streamed):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())


@pytest.mark.parametrize("name", ["randaugment", "augmix", "erasing"])
def test_tflite_export_leaves_the_new_random_layers_out(name):
    from search.deliver.tflite import inference_model

    model = build_model(TrialConfig(augment=name), 5)
    stripped = inference_model(model)  # checks its own predictions against the model's
    assert stripped is not model
    kinds = {type(layer).__name__ for layer in stripped.layers}
    assert not kinds & {"RandAugment", "AugMix", "RandomErasing", "RandomFlip"}


def test_a_model_trained_with_layer_rates_saves_and_loads_as_plain_keras_without_warnings(tmp_path):
    import warnings

    cfg = dataclasses.replace(TOP_BLOCKS, layer_decay=0.5, finetune_epochs=1)
    data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    result = train(cfg, data.train, data.val, data.class_names)
    path = tmp_path / "model.keras"
    result.model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Keras' "Skipping variable loading for optimizer"
        loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded.optimizer).__name__ == "Adam"
    x = data.val.images[:8].astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)


def test_the_flowers_report_says_which_rows_share_which_seeds():
    from search.bench.flowers import seeds_words

    reports = {"search winner": {"seeds": [{"seed": 4}, {"seed": 5}]}, "winner, l2sp=0.0 (was 0.1)":
               {"seeds": [{"seed": 4}, {"seed": 5}]}, "seeds: frozen + Adam": {"seeds": [{"seed": 0}, {"seed": 1}]}}
    assert seeds_words(reports) == ("search winner, winner, l2sp=0.0 (was 0.1): seeds 4, 5; "
                                    "seeds: frozen + Adam: seeds 0, 1")
