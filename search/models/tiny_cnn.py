"""tiny_cnn: the project's own small backbone for the offline default, pretrained once on the built-in
source task (search/data/builtin.py) and cached under studies/_pretrained/ (about a minute on 2 CPU cores).
The target classes never appear in the source task, so what transfers is the features, as with ImageNet.

Keras is imported inside the functions that build or train: backbones.py registers tiny_cnn without it.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
from pathlib import Path

import numpy as np

from search.config import studies_dir
from search.data import builtin
from search.data.builtin import SIZE, make_task
from search.files import atomic_path

PRETRAIN_EPOCHS = 25
# The same task and recipe as fingerprinted before search/models/ existed (a hash of the whole old builtin.py):
# a best.yaml exported then still checks as trained on these weights.
EARLIER_FINGERPRINTS = frozenset({"d69de1c1fee7"})


def build_tiny_cnn(input_shape, weights):
    """A 4-block CNN (16-32-64-128 filters, BatchNorm, ReLU); weights: None | builtin | a file path."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((16, 32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        if i < 4:
            x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    model = keras.Model(inputs, x, name="tiny_cnn")
    if weights == "builtin":
        model.load_weights(pretrained_tiny_cnn())
    elif weights == "imagenet":
        raise ValueError("tiny_cnn has no ImageNet weights: use weights 'builtin', 'none' or a file")
    elif weights:
        model.load_weights(weights)
    return model


def source_fingerprint() -> str:
    """Changes whenever the source task or the pretraining recipe changes (the code that draws the images, the
    architecture, the training), so the cache never goes stale; a comment or a moved file elsewhere does not."""
    parts = [inspect.getsource(f) for f in (builtin._mask, builtin._draw, builtin.make_task, build_tiny_cnn, _pretrain)]
    text = "".join(parts) + repr(builtin.TASKS) + repr(builtin.SOURCE_CLASSES) + f"{builtin.SIZE} {PRETRAIN_EPOCHS}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def same_recipe(fingerprint: str | None) -> bool:
    return fingerprint == source_fingerprint() or fingerprint in EARLIER_FINGERPRINTS


def pretrained_tiny_cnn() -> str:
    """Path of tiny_cnn's weights pretrained on the source task; trains and caches them on first use. Behind a
    file lock: processes starting together (workers, parallel tests) pretrain once, the others wait for it."""
    path = studies_dir() / "_pretrained" / f"tiny_cnn_shapes-source_{source_fingerprint()}.weights.h5"
    if path.exists():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".pretrain.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if not path.exists():  # another process may have made it while this one waited
            _pretrain(path)
    return str(path)


def _pretrain(path: Path) -> None:
    import keras
    from keras import layers

    from search.models.preprocess import Preprocess

    print(f"pretraining tiny_cnn on the built-in source task (once; cached as {path}) ...", flush=True)
    keras.utils.set_random_seed(1234)
    images, labels, classes = make_task("shapes-source")
    order = np.random.default_rng(0).permutation(len(labels))  # validation_split takes the tail
    images, labels = images[order], labels[order]
    backbone = build_tiny_cnn((SIZE, SIZE, 3), None)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = backbone(Preprocess("tf")(inputs))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    steps = PRETRAIN_EPOCHS * int(np.ceil(len(labels) * 0.9 / 64))
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, batch_size=64, epochs=PRETRAIN_EPOCHS, validation_split=0.1,
                        verbose=0, shuffle=True)
    print(f"  source-task validation accuracy {history.history['val_accuracy'][-1]:.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # concurrent workers never see half a file
        backbone.save_weights(tmp)
    keras.backend.clear_session()
