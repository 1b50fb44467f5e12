"""Convert a retrained model to TensorFlow Lite, check it against the Keras model, measure its latency.

`python -m search export-tflite --config studies/<study>/best.yaml [--run run-N] [--seed S]` takes the
model a `retrain` of that config saved (studies/<study>/retrain/run-N/seed-S/model.keras; by default the
newest run retrained from this very config, and its first seed) and writes next to it,
run-N/seed-S/tflite/:
  model_float.tflite    float32 weights and activations
  model_int8.tflite     dynamic-range quantization: int8 weights, float activations (no representative
                        dataset needed; about 4x smaller)
  report.md, report.json  per model: file size, test accuracy and its difference from Keras, the share of
                        test images with the same top-1 class as Keras, the largest probability difference,
                        and latency per image at batch 1 (mean, p50, p90)

The test split is the one retrain evaluated once: the run's own config.yaml (not the given file, which a
later `make export` may have rewritten) through retrain's `load_config` and data.load_split, with the
dataset fingerprint checked as retrain checks it.

TensorFlow is imported inside the functions that convert and run: `--help` and argument errors start fast.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from search.config import study_dir
from search.data.datasets import load_split, make_dataset
from search.deliver.export import check_fingerprints, library_versions
from search.deliver.retrain import load_config
from search.errors import UserError
from search.files import write_bytes_atomic

MODELS = ("keras", "tflite_float", "tflite_int8")
LABELS = {"keras": "Keras", "tflite_float": "TFLite float32", "tflite_int8": "TFLite int8 (dynamic range)"}
FILES = {"tflite_float": "model_float.tflite", "tflite_int8": "model_int8.tflite"}


# ------------------------------------------------------------------------------------ find the model


def find_run(config_path: str | Path, run: str | None = None) -> tuple[Path, object]:
    """(run folder, TrialConfig) of the newest retrain of this config, or of `run` (a run-N name).

    Several configs retrain into the same studies/<study>/retrain/ (best.yaml, best-2.yaml, baselines),
    so a run belongs to the config when its config.yaml resolves to the same TrialConfig.
    """
    if not Path(config_path).is_file():
        raise UserError(f"config {str(config_path)!r} not found (`make export STUDY=<name>` writes one)")
    space, cfg = load_config(config_path)
    study = space.exported.get("study") or space.study.name
    parent = study_dir(study) / "retrain"
    hint = f"run `make retrain CONFIG={config_path}` first"
    runs = sorted((p for p in parent.glob("run-*") if p.name[4:].isdigit() and p.is_dir()),
                  key=lambda p: int(p.name[4:]))
    mine = [p for p in runs if _run_config(p) == cfg]
    if run is not None:
        chosen = parent / run
        if chosen not in runs:
            raise UserError(f"no run {run!r} in {parent}; runs of {config_path}: "
                            f"{', '.join(p.name for p in mine) or f'none ({hint})'}")
        if chosen not in mine:
            raise UserError(f"{chosen} was retrained from another config than {config_path}; runs of it: "
                            f"{', '.join(p.name for p in mine) or f'none ({hint})'}")
        return chosen, cfg
    if not mine:
        others = f" (it holds {len(runs)} run(s) of other configs)" if runs else ""
        raise UserError(f"no retrained run of {config_path} in {parent}{others}: {hint}")
    return mine[-1], cfg


def _run_config(run: Path):
    try:
        return load_config(run / "config.yaml")[1]
    except (UserError, OSError):
        return None  # not a run of any config we can read: of no config, then


def find_model(run: Path, seed: int | None = None) -> Path:
    """The seed-S folder with the model: `seed`, else the run's first seed (the config's own seed)."""
    folders = sorted((p for p in run.glob("seed-*") if p.name[5:].lstrip("-").isdigit()),
                     key=lambda p: int(p.name[5:]))
    with_model = [p for p in folders if (p / "model.keras").is_file()]
    if seed is not None:
        folder = run / f"seed-{seed}"
        if folder not in with_model:
            raise UserError(f"{run} has no model for seed {seed} ({folder / 'model.keras'}); seeds with a "
                            f"model: {', '.join(p.name[5:] for p in with_model) or 'none'}")
        return folder
    if not with_model:
        raise UserError(f"{run} has no model (seed-*/model.keras): its retrain was interrupted or is still "
                        f"running; pass --run with another run, or retrain again")
    return with_model[0]


# ------------------------------------------------------------------------------------------ convert


@contextlib.contextmanager
def _quiet_native_stderr():
    """Drop what TFLite's C++ side writes to file descriptor 2 (MLIR/absl converter logs, one line per
    unsupported op, 'Created TensorFlow Lite XNNPACK delegate'): TF_CPP_MIN_LOG_LEVEL does not reach all
    of it. A failed conversion says what matters in its exception, which becomes the one-line error."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def inference_model(model):
    """The model without its augmentation layers (RandomFlip, RandomZoom, ...), sharing its weights.

    They are identities at inference, but Keras 3 still traces their random ops into the SavedModel, and
    StatelessRandomUniformV2 / ImageProjectiveTransformV3 are not builtin TFLite ops, so a model trained
    with `augment: light|strong|randaugment|...` would not convert. search.models.build builds a chain (input, augmentation,
    preprocess, backbone, pooling, head), so the remaining layers are called in order, in inference mode,
    and the result is checked against the model on two random images.
    """
    from search.models.ensemble import random_layer_types, without_augmentation

    if not any(isinstance(layer, random_layer_types()) for layer in model.layers):
        return model
    stripped = without_augmentation(model)
    # the chain is search.models.build's layout; check it rather than trust it (a model built otherwise fails here)
    probe = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype(np.float32)
    if not np.allclose(stripped(probe, training=False), model(probe, training=False), atol=1e-5):
        raise UserError(f"model {model.name!r}: leaving out its augmentation layers changed its predictions "
                        f"(not a chain of layers?); cannot convert it to TensorFlow Lite")
    return stripped


def convert(model) -> dict[str, bytes]:
    """{"tflite_float": bytes, "tflite_int8": bytes} of a Keras model.

    Route: `model.export(dir, format="tf_saved_model")`, then `TFLiteConverter.from_saved_model`. With
    TF 2.21 and Keras 3.15 `from_keras_model` works too, but only by doing this same export into a temp
    folder and printing the whole signature; `from_concrete_functions` over `model(x, training=False)`
    did not capture the Keras 3 variables (a 18 KB file that gave NaN). The SavedModel's serving function
    is the model in inference mode (dropout off; augmentation left out, see inference_model), our
    Preprocess layer traced into plain TF ops, so the .tflite takes the same raw 0-255 float pixels as
    model.keras. Builtin TFLite ops only: the files must run on a phone's interpreter without the Flex
    delegate.
    """
    import tensorflow as tf

    model = inference_model(model)
    out = {}
    with tempfile.TemporaryDirectory(prefix="tflite-savedmodel-") as tmp:
        try:
            with _quiet_native_stderr():
                model.export(tmp, format="tf_saved_model", verbose=False)
                converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
                out["tflite_float"] = converter.convert()
                # dynamic-range quantization: weights to int8, activations stay float, no calibration data
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                out["tflite_int8"] = converter.convert()
        except Exception as exc:
            text = str(exc)
            select = re.search(r"TF Select ops: ([^\n]+)", text)
            detail = (f"ops outside TFLite's builtin set: {select.group(1)}" if select else
                      next((line for line in text.splitlines() if line.strip()), "")[:300])
            raise UserError(f"TensorFlow Lite conversion of {model.name!r} failed ({type(exc).__name__}): "
                            f"{detail}") from exc
    return out


class LiteModel:
    """A TFLite model at batch 1: call with float32 [1, H, W, 3], get the [1, classes] probabilities.

    tf.lite.Interpreter, not the ai-edge-litert package: TF 2.21 warns that tf.lite.Interpreter "is
    deprecated and is scheduled for deletion in TF 2.20" (sic), but the pinned 2.21 ships it and it works.
    On this machine ai-edge-litert 2.3.0 gave bit-identical outputs and the same latency (same TFLite
    kernels, XNNPACK on CPU) for one more 60 MB binary dependency, so it is not clearly better here. When
    a TF upgrade removes tf.lite.Interpreter, `from ai_edge_litert.interpreter import Interpreter` is the
    drop-in replacement for the one line below (same constructor and methods).
    """

    def __init__(self, content: bytes, threads: int):
        import tensorflow as tf

        with warnings.catch_warnings(), _quiet_native_stderr():
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)  # a copy


def cpu_threads() -> int:
    """CPUs this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------ measure, write


def _agreement(probs: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict:
    accuracy = float(np.mean(probs.argmax(1) == labels))
    return {
        "accuracy": accuracy,
        "correct": int(np.sum(probs.argmax(1) == labels)),
        "accuracy_diff": accuracy - float(np.mean(ref.argmax(1) == labels)),
        "top1_agreement": float(np.mean(probs.argmax(1) == ref.argmax(1))),
        "max_abs_prob_diff": float(np.abs(probs - ref).max()),
        "mean_abs_prob_diff": float(np.abs(probs - ref).mean()),
    }


def measure_latency(runners: dict, images: np.ndarray, runs: int, warmup: int) -> dict:
    """ms per image at batch 1: mean, p50, p90 over `runs` calls of each runner after `warmup` calls.

    The runners take turns image by image, in a rotating order, so a neighbour's load on a shared
    machine falls on all of them alike rather than on whichever ran during it.
    """
    names = list(runners)

    def batch(i: int) -> np.ndarray:
        return images[i % len(images)][None].astype(np.float32)

    for name in names:
        for i in range(warmup):
            runners[name](batch(i))
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        x = batch(i)
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runners[name](x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"mean": float(np.mean(t)), "p50": float(np.percentile(t, 50)),
                   "p90": float(np.percentile(t, 90))} for name, t in times.items()}


def export_tflite(config_path: str | Path, run: str | None = None, seed: int | None = None,
                  runs: int = 200, warmup: int = 10) -> tuple[Path, dict]:
    """Convert, compare, time; returns (the tflite folder, the report)."""
    import keras

    import search.models.preprocess  # noqa: F401  registers the Preprocess layer for load_model

    if runs < 1 or warmup < 0:
        raise UserError(f"--runs must be at least 1 and --warmup at least 0, got {runs} and {warmup}")
    run_dir, _ = find_run(config_path, run)
    folder = find_model(run_dir, seed)
    space, cfg = load_config(run_dir / "config.yaml")  # what was retrained (equal to config_path's params)
    dataset = (space.exported or {}).get("dataset")
    if dataset:  # the test split must be the one retrain evaluated; backbone weights no longer matter
        check_fingerprints(replace(cfg, weights="none"), {"dataset": dataset}, str(run_dir / "config.yaml"))
    test = load_split(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed, "test")
    names_file = folder / "class_names.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else None
    model_path = folder / "model.keras"
    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as exc:
        raise UserError(f"cannot load {model_path} ({type(exc).__name__}): {str(exc).splitlines()[0][:300]}") \
            from exc
    print(f"converting {model_path} to TensorFlow Lite (float32, dynamic-range int8) ...", flush=True)
    blobs = convert(model)
    threads = cpu_threads()
    lite = {name: LiteModel(blob, threads) for name, blob in blobs.items()}

    # agreement: Keras through retrain's own test pipeline, TFLite image by image as on a device
    keras_probs = model.predict(make_dataset(test, model.output_shape[-1], cfg.batch_size, shuffle=False),
                                verbose=0)
    images = test.images.astype(np.float32)
    probs = {"keras": keras_probs}
    for name, runner in lite.items():
        probs[name] = np.concatenate([runner(images[i:i + 1]) for i in range(len(images))])
    print(f"timing {runs} images at batch 1 per model after {warmup} warm-up calls ...", flush=True)
    latency = measure_latency({"keras": model.predict_on_batch, **lite}, test.images, runs, warmup)

    retrain_report = run_dir / "report.json"
    reported = None
    if retrain_report.is_file():
        record = next((r for r in json.loads(retrain_report.read_text()).get("seeds", [])
                       if r.get("folder") == folder.name), None)
        reported = record and record["test"]["accuracy"]
    sizes = {"keras": model_path.stat().st_size, **{name: len(blob) for name, blob in blobs.items()}}
    files = {"keras": "../model.keras", **FILES}
    report = {
        "study": (space.exported or {}).get("study") or space.study.name,
        "trial": (space.exported or {}).get("trial"),
        "run": run_dir.name,
        "seed": int(folder.name[5:]),
        "model": f"{folder.name}/model.keras",
        "source_config": str(config_path),
        "created_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "backbone": cfg.backbone, "alpha": cfg.alpha, "image_size": cfg.image_size,
        "dataset": cfg.dataset, "num_classes": int(model.output_shape[-1]), "class_names": names,
        "test_images": len(test),
        "retrain_test_accuracy": reported,
        "runtime": f"tf.lite.Interpreter (tensorflow {_tf_version()}), XNNPACK, num_threads={threads}; "
                   f"Keras: predict_on_batch",
        "latency_setup": {"batch": 1, "warmup": warmup, "runs": runs, "interleaved": True, "threads": threads,
                          "cpus": os.cpu_count(), "machine": platform.machine(),
                          "processor": _cpu_name()},
        "models": {name: {"label": LABELS[name], "file": files[name], "bytes": sizes[name],
                          **_agreement(probs[name], keras_probs, test.labels),
                          "latency_ms": latency[name]} for name in MODELS},
        "versions": library_versions(),
    }
    if reported is not None and abs(reported - report["models"]["keras"]["accuracy"]) > 1e-9:
        print(f"warning: Keras test accuracy {report['models']['keras']['accuracy']:.4f} differs from "
              f"{reported:.4f} in {retrain_report}: the model file changed since retrain", flush=True)

    out = folder / "tflite"
    out.mkdir(exist_ok=True)
    for name, blob in blobs.items():  # everything measured first; files written last, each whole
        write_bytes_atomic(out / FILES[name], blob)
    write_bytes_atomic(out / "report.json", json.dumps(report, indent=1).encode())
    write_bytes_atomic(out / "report.md", render_markdown(report).encode())
    return out, report


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------------------------------------- report


def table(report: dict) -> str:
    n = report["test_images"]
    lines = ["| model | file | size | test accuracy | vs Keras | same top-1 as Keras | max abs prob diff "
             "| mean ms | p50 ms | p90 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keras_correct = report["models"]["keras"]["correct"]
    for name in MODELS:
        m = report["models"][name]
        lat = m["latency_ms"]
        if name == "keras":
            diff, agree, maxdiff = "", "", ""
        else:
            diff = f"{m['accuracy_diff']:+.4f} ({m['correct'] - keras_correct:+d} of {n})"
            agree = f"{m['top1_agreement']:.2%}"
            maxdiff = f"{m['max_abs_prob_diff']:.2g}"
        lines.append(f"| {m['label']} | `{m['file']}` | {m['bytes'] / 1024:,.0f} KB | {m['accuracy']:.4f} | {diff} "
                     f"| {agree} | {maxdiff} | {lat['mean']:.2f} | {lat['p50']:.2f} | {lat['p90']:.2f} |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    s = report["latency_setup"]
    alpha = f" alpha {report['alpha']}" if report["backbone"].startswith("mobilenet") else ""
    reported = report["retrain_test_accuracy"]
    return "\n".join([
        f"# TensorFlow Lite: study `{report['study']}`, trial {report['trial']}, {report['run']}, "
        f"seed {report['seed']}",
        "",
        f"- model: `{report['model']}` ({report['backbone']}{alpha}, {report['image_size']} px, "
        f"{report['num_classes']} classes); input raw 0-255 RGB float32 [1, {report['image_size']}, "
        f"{report['image_size']}, 3], output softmax probabilities",
        f"- test split: {report['test_images']} images of `{report['dataset']}`, the split retrain evaluated once"
        + (f" (its report: test accuracy {reported:.4f})" if reported is not None else ""),
        f"- latency: batch 1, {s['warmup']} warm-up calls, then {s['runs']} timed images per model, the models "
        f"taking turns; {report['runtime']}; {s['cpus']} CPUs ({s['processor'] or s['machine']})",
        "- sizes: `model.keras` includes the optimizer state; the .tflite files are what ships",
        "",
        table(report),
        "",
    ])
