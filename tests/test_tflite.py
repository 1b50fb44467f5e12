"""export-tflite: a retrained model as float32 and dynamic-range int8 .tflite files that agree with it.

A tiny retrain stands in for a real one: tiny_cnn from scratch (`weights: none`, no 35 s pretraining),
3 epochs at 32 px on builtin:shapes with light augmentation (whose random ops TFLite lacks: the
conversion must leave those layers out), a few seconds. It stays near chance accuracy, which does not matter
here: what is checked is that the .tflite files compute the same function as model.keras, and its
predictions spread over the classes (checked), so agreeing on them is not trivial. The conversion, the
agreement pass over the whole test split and the timing run for real.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from search.config import studies_dir
from search.deliver.retrain import retrain
from search.deliver.tflite import convert, export_tflite, find_model, find_run
from search.errors import UserError
from tests.conftest import write

CONFIG = """
study:
  name: {name}
params:
  dataset: builtin:shapes
  image_size: 32
  backbone: tiny_cnn
  weights: none
  freeze: full
  warmup_epochs: 1
  finetune_epochs: 2
  optimizer: sgd
  learning_rate: {lr}
  dropout: 0.1
  augment: light
  seed: 0
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    config = write(folder / "best.yaml", CONFIG.format(name="tfl", lr=0.01))
    run = retrain(config)
    out, report = export_tflite(config, runs=30, warmup=3)
    return config, run, out, report


@pytest.mark.slow
def test_both_files_are_written_and_int8_is_smaller(exported):
    config, run, out, report = exported
    assert out == run / "seed-0" / "tflite" and run == studies_dir() / "tfl" / "retrain" / "run-1"
    sizes = {name: (out / f"model_{name}.tflite").stat().st_size for name in ("float", "int8")}
    assert sizes["float"] > 0 and 0 < sizes["int8"] < sizes["float"] / 2
    assert report["models"]["tflite_float"]["bytes"] == sizes["float"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_tflite_agrees_with_keras_on_the_test_split(exported):
    _, run, out, report = exported
    models = report["models"]
    assert report["test_images"] == 150
    # the Keras numbers are retrain's own: same model file, same test split, same pipeline
    retrained = json.loads((run / "report.json").read_text())["seeds"][0]["test"]["accuracy"]
    assert models["keras"]["accuracy"] == pytest.approx(retrained, abs=1e-9) == report["retrain_test_accuracy"]
    f = models["tflite_float"]
    assert f["top1_agreement"] >= 0.99 and f["max_abs_prob_diff"] < 1e-4
    assert abs(f["accuracy_diff"]) <= 0.01
    q = models["tflite_int8"]  # int8 weights: close, not equal
    assert q["top1_agreement"] >= 0.9 and q["max_abs_prob_diff"] < 0.2
    assert q["accuracy_diff"] == pytest.approx(q["accuracy"] - models["keras"]["accuracy"])


def test_report_has_every_field(exported):
    _, _, out, report = exported
    assert json.loads((out / "report.json").read_text()) == report
    assert (report["run"], report["seed"], report["model"]) == ("run-1", 0, "seed-0/model.keras")
    assert report["latency_setup"]["batch"] == 1 and report["latency_setup"]["runs"] == 30
    for name in ("keras", "tflite_float", "tflite_int8"):
        m = report["models"][name]
        assert {"file", "bytes", "accuracy", "accuracy_diff", "top1_agreement", "max_abs_prob_diff",
                "mean_abs_prob_diff", "latency_ms"} <= set(m)
        lat = m["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] and lat["mean"] > 0
    assert report["models"]["keras"]["top1_agreement"] == 1.0 and report["models"]["keras"]["accuracy_diff"] == 0
    md = (out / "report.md").read_text()
    assert "| TFLite float32 | `model_float.tflite` |" in md and "| TFLite int8 (dynamic range) |" in md


def test_the_file_runs_like_the_keras_model(exported):
    import keras
    import tensorflow as tf

    from search.data.datasets import load_split

    _, run, out, _ = exported
    model = keras.models.load_model(run / "seed-0" / "model.keras", safe_mode=True)
    x_all = load_split("builtin:shapes", 32, (0.75, 0.10, 0.15), 0, "test").images.astype(np.float32)
    x = x_all[:3]
    interpreter = tf.lite.Interpreter(model_path=str(out / "model_float.tflite"))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, 32, 32, 3] and inp["dtype"] == np.float32  # raw 0-255 pixels in
    predicted = np.argmax(model.predict(x_all, batch_size=64, verbose=0), axis=1)
    assert len(np.unique(predicted)) >= 3  # not a constant function: top-1 agreement means something
    for image in x:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(outp["index"]), model(image[None], training=False),
                                   atol=1e-5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "search", "export-tflite", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_a_config_without_a_retrained_run_is_a_one_line_error(exported, tmp_path):
    config, run, _, _ = exported
    other = write(tmp_path / "best-2.yaml", CONFIG.format(name="tfl", lr=0.001))  # same study, other params
    proc = _cli("--config", str(other))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (  # the lines before it are TensorFlow's start-up
        f"error: no retrained run of {other} in {run.parent} (it holds 1 run(s) of other configs): "
        f"run `make retrain CONFIG={other}` first")
    assert "Traceback" not in proc.stderr and not proc.stdout
    with pytest.raises(UserError, match="config '.*nothing.yaml' not found"):
        find_run(tmp_path / "nothing.yaml")
    with pytest.raises(UserError, match=r"no run 'run-7' .*; runs of .*: run-1$"):
        find_run(config, "run-7")
    with pytest.raises(UserError, match="was retrained from another config"):
        find_run(other, "run-1")
    with pytest.raises(UserError, match=r"no model for seed 5 .*; seeds with a model: 0$"):
        find_model(run, 5)


def test_a_run_without_a_model_is_named(exported):
    config, run, _, _ = exported
    broken = run.parent / "run-2"  # an interrupted retrain: config copied, no model saved
    broken.mkdir()
    shutil.copyfile(run / "config.yaml", broken / "config.yaml")
    try:
        with pytest.raises(UserError, match=r"run-2 has no model \(seed-\*/model.keras\)"):
            export_tflite(config)
        assert find_run(config, "run-1")[0] == run
    finally:
        shutil.rmtree(broken)


def test_an_op_outside_tflite_builtins_is_a_one_line_error():
    import keras
    import tensorflow as tf

    class Tan(keras.layers.Layer):
        def call(self, x):
            return tf.math.tan(x)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Tan()(keras.layers.Dense(3)(inputs)), name="odd")
    with pytest.raises(UserError) as info:
        convert(model)
    assert str(info.value) == ("TensorFlow Lite conversion of 'odd' failed (ConverterError): ops outside "
                               "TFLite's builtin set: Tan")
