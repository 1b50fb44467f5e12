"""Compute the frozen part once: what it outputs for every image of a split, kept for later epochs and trials.

The rule, decided per trial by `plan_trial` and applied by search.training.train:
  - a random augmentation (augment light|strong|randaugment|...) or image mixing (mix mixup|cutmix): no cache
    for the whole trial. Random views differ every
    epoch, so no stored tensor is exact; we never mix cached and augmented epochs.
  - phase 1 (backbone frozen) and phase 2 of `frozen` trials: the head trains on pooled features.
  - phase 2 of top_blocks / top_layers: the top part trains on the backbone's tensor at the cut, if the
    cut is exact (search.training.cut.find_cut: every block start; a layer-wise start only where one tensor
    crosses, which TrialConfig.round_to_block guarantees) and those tensors fit the memory budget.
  - `full`, or a frozen part with layers that are random during fit (EfficientNet's drop-connect):
    images, as without a cache.
Keys are content hashes of everything the tensors depend on: the frozen layers' classes, configs (names
aside) and weight values, the input shape, the dtype policy and the split's image bytes. A change of
backbone, alpha, weights, image size, split or preprocessing changes the key; nothing is ever stale.

Settings (read at every trial): TRANSFER_SEARCH_FEATURE_CACHE = auto (default) | memory | disk | off;
TRANSFER_SEARCH_FEATURE_CACHE_MB (default 1024) bounds the in-process store (least recently used
go first). `disk` persists every array under <studies>/_cache/features/<key>.npy, so a second worker or a
resumed study reuses them; `auto` keeps small arrays in memory (faster) and persists the ones over
AUTO_DISK_BYTES, memory-mapped back: a large data set's tensors take page cache, not the process's
memory, and are never a reason to train on images. `memory` never writes, and trains on images when the
tensors at a cut exceed the budget. Delete the folder to reclaim the space.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections import Counter, OrderedDict

import keras
import numpy as np
import tensorflow as tf

from search.config import TrialConfig, studies_dir
from search.data.rows import ImageRows
from search.errors import UserError
from search.models.augment import get_augmentation, get_mix
from search.models.backbones import backbone_layers, get_backbone
from search.models.build import get_backbone_model, trainable_range_start
from search.models.freezing import get_strategy
from search.training.cut import Cut, extractor, find_cut, standard_layout, stochastic_layers

MODES = ("auto", "memory", "disk", "off")
AUTO_DISK_BYTES = 64 * 2**20  # auto: arrays above this go to disk and are memory-mapped back
DISK_MB = 20 * 1024  # the features folder's bound (TRANSFER_SEARCH_FEATURE_CACHE_DISK_MB): least recently used go
KEY_VERSION = 1  # bump when the extraction itself changes


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str = "auto"
    max_bytes: int = 1024 * 2**20
    disk_bytes: int = DISK_MB * 2**20


_override: Settings | None = None


def settings() -> Settings:
    if _override is not None:
        return _override
    mode = os.environ.get("TRANSFER_SEARCH_FEATURE_CACHE", "auto")
    if mode not in MODES:
        raise UserError(f"TRANSFER_SEARCH_FEATURE_CACHE={mode!r}; valid: {', '.join(MODES)}")
    sizes = {}
    for name, default in (("TRANSFER_SEARCH_FEATURE_CACHE_MB", "1024"), ("TRANSFER_SEARCH_FEATURE_CACHE_DISK_MB",
                                                                       str(DISK_MB))):
        sizes[name] = os.environ.get(name, default)
        if not sizes[name].isdigit():
            raise UserError(f"{name}={sizes[name]!r}: expected a whole number of MiB")
    return Settings(mode, int(sizes["TRANSFER_SEARCH_FEATURE_CACHE_MB"]) * 2**20,
                    int(sizes["TRANSFER_SEARCH_FEATURE_CACHE_DISK_MB"]) * 2**20)


@contextlib.contextmanager
def using(mode: str, max_mb: int | None = None):
    """Run a block with a given cache mode (benchmarks and tests compare paths in one process)."""
    global _override
    if mode not in MODES:
        raise UserError(f"unknown cache mode {mode!r}; valid: {', '.join(MODES)}")
    previous = _override
    _override = Settings(mode, (max_mb if max_mb is not None else settings().max_bytes // 2**20) * 2**20)
    try:
        yield
    finally:
        _override = previous


# ------------------------------------------------------------------------------------------------ plan


@dataclasses.dataclass(frozen=True)
class Plan:
    phase1: str  # "features" (head on pooled features) | "images"
    phase2: str  # "features" | "cut" (top part on the tensor at the cut) | "images"
    cut: Cut | None = None
    note: str = ""  # why images where a cache was wanted

    def describe(self) -> str:
        where = f"cut at {self.cut.layer_name}" if self.phase2 == "cut" else self.phase2
        return f"phase 1: {self.phase1}, phase 2: {where}" + (f" ({self.note})" if self.note else "")


last_plan: Plan | None = None  # the latest trial's plan (benchmarks and tests read it)


def plan_trial(cfg: TrialConfig, model: keras.Model, n_images: int) -> Plan:
    """Which phases of this trial train on cached tensors; `model` is freshly built (phase-1 flags)."""
    global last_plan
    plan = _plan(cfg, model, n_images)
    # a copy without the cut's tensor, which would keep this trial's whole graph alive after it ends
    last_plan = dataclasses.replace(plan, cut=plan.cut and dataclasses.replace(plan.cut, tensor=None))
    return plan


def _plan(cfg: TrialConfig, model: keras.Model, n_images: int) -> Plan:
    if settings().mode == "off":
        return Plan("images", "images", note="feature cache off")
    if not get_augmentation(cfg.augment).cacheable:
        return Plan("images", "images", note=f"augment={cfg.augment}: random views every epoch, no cache")
    if not get_mix(cfg.mix).cacheable:
        return Plan("images", "images", note=f"mix={cfg.mix}: mixed images every epoch, no cache")
    if not standard_layout(model):
        return Plan("images", "images", note="model is not image -> preprocess -> backbone -> pool -> head")
    backbone = get_backbone_model(model)
    own = backbone_layers(backbone)
    noisy = stochastic_layers(own)
    phase1 = "images" if noisy else "features"
    note = f"{cfg.backbone}: {noisy[0]} is random during fit" if noisy else ""
    if not get_strategy(cfg.freeze).trains_backbone or cfg.finetune_epochs == 0:
        return Plan(phase1, phase1, note=note)
    if cfg.warmup_epochs == 0:  # phase 1 does not run: compute nothing for it
        phase1 = "images"
    start = trainable_range_start(get_backbone(cfg.backbone), backbone, cfg)
    if start == 0:  # every layer trains (`full`, or top_layers with unfreeze_layers = all): nothing to cache
        return Plan(phase1, "images", note=note)
    cut, why = find_cut(backbone, start)
    noisy = stochastic_layers(own[:start])
    if cut is not None and noisy:
        cut, why = None, f"{cfg.backbone}: {noisy[0]} below the cut is random during fit"
    if cut is not None:
        size = int(np.prod(cut.tensor.shape[1:])) * 4 * n_images
        if size > settings().max_bytes and settings().mode == "memory":
            cut, why = None, (f"tensors at {cut.layer_name} take {size / 2**20:.0f} MiB, over the "
                              f"{settings().max_bytes / 2**20:.0f} MiB budget")
    return Plan(phase1, "cut" if cut else "images", cut, note or why)


_announced: set[str] = set()


def announce(plan: Plan) -> None:
    """Say once per process why a kind of trial trains on images although a cache is on."""
    if plan.note and settings().mode != "off" and plan.note not in _announced:
        _announced.add(plan.note)
        print(f"feature cache not used: {plan.note}", flush=True)


# ------------------------------------------------------------------------------------------------ keys

def data_digest(images) -> str:
    """What a split's images are (search.data.rows.ImageRows.digest: the store's file, the rows, the flips;
    a plain array is viewed whole)."""
    return (images if isinstance(images, ImageRows) else ImageRows(np.asarray(images))).digest()


def layers_digest(layer_list) -> str:
    """Hash of what a stack of layers computes: classes, configs without names, weight values."""
    h = hashlib.blake2b(digest_size=16)
    for layer in layer_list:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        h.update(f"{type(layer).__name__}{json.dumps(config, sort_keys=True, default=str)}".encode())
        for weight in layer.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
            h.update(f"{value.shape}{value.dtype}".encode())
            h.update(memoryview(value).cast("B"))
    return h.hexdigest()


def feature_key(model: keras.Model, cut: Cut | None, images: np.ndarray) -> str:
    """Key of the pooled features (cut None) or of the tensors at `cut`, for these images."""
    own = backbone_layers(get_backbone_model(model))
    frozen = own[:cut.start] if cut else own + [model.get_layer("pool")]
    parts = {
        "version": KEY_VERSION,
        "what": f"cut:{cut.layer_name}" if cut else "pool",
        "input": list(model.input.shape[1:]),
        "dtype": keras.config.dtype_policy().name,
        "layers": layers_digest([model.get_layer("preprocess"), *frozen]),
        "data": data_digest(images),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------- store


class FeatureStore:
    """In-process store of read-only arrays, bounded in bytes (least recently used out first),
    backed by .npy files when the mode is `disk`."""

    def __init__(self):
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.nbytes = 0
        self.stats: Counter = Counter()  # memory_hits, disk_hits, misses, computed_seconds

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def folder():
        return studies_dir() / "_cache" / "features"

    def get(self, key: str) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.stats["memory_hits"] += 1
            return self._items[key]
        path = self.folder() / f"{key}.npy"
        if settings().mode in ("disk", "auto") and path.is_file():
            try:
                mapped = settings().mode == "auto" or path.stat().st_size > AUTO_DISK_BYTES
                array = np.load(path, allow_pickle=False, mmap_mode="r" if mapped else None)
            except (OSError, ValueError):  # a torn or foreign file: recompute and overwrite it
                return None
            self.stats["disk_hits"] += 1
            os.utime(path)  # recently used: trimmed last
            self._keep(key, array)
            return array
        return None

    def put(self, key: str, array: np.ndarray) -> np.ndarray:
        """Store an array; returns the one to use from now on (in auto mode, a large one's memory map)."""
        try:
            sink = _Sink(key, array.shape, array.dtype, self)
            sink.write(0, array)
            return sink.finish()
        except _DiskFull as exc:  # a full or read-only disk costs the reuse, never the trial
            _warn_disk(exc)
            self._keep(key, array)
            return array

    def _keep(self, key: str, array: np.ndarray) -> None:
        if isinstance(array, np.memmap):  # the page cache holds it, not this process: no budget needed
            self._items[key] = array
            return
        array.setflags(write=False)  # shared across trials: nobody may change it in place
        budget = settings().max_bytes
        if array.nbytes > budget:
            return
        self._items[key] = array
        self.nbytes += array.nbytes
        while self.nbytes > budget:
            _, old = self._items.popitem(last=False)
            if not isinstance(old, np.memmap):
                self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0
        self.stats.clear()


STORE = FeatureStore()


def trim(folder, budget: int, keep) -> None:
    """Delete the least recently used .npy files until the folder fits `budget` bytes (never `keep`, just
    written). A process that has one mapped keeps reading it: on POSIX the data lives until it is unmapped."""
    facts = []
    for f in folder.glob("*.npy"):
        with contextlib.suppress(FileNotFoundError):  # another worker trimmed it meanwhile
            st = f.stat()
            facts.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in facts)
    for _, size, f in sorted(facts):
        if total <= budget:
            break
        if f != keep:
            total -= size
            f.unlink(missing_ok=True)


def frozen_outputs(model: keras.Model, plan: Plan, splits: list, batch_size: int) -> list[dict]:
    """Per image array: {"pool": pooled features, "cut": tensors at the cut}, as the plan needs them,
    from the store or computed in one inference pass over the arrays that miss (and stored)."""
    wanted = {"pool": None} if "features" in (plan.phase1, plan.phase2) else {}
    if plan.phase2 == "cut":
        wanted["cut"] = plan.cut
    keys = [{name: feature_key(model, at, images) for name, at in wanted.items()} for images in splits]
    found = [{name: STORE.get(key) for name, key in k.items()} for k in keys]
    missing = [i for i, f in enumerate(found) if any(v is None for v in f.values())]
    if missing:
        STORE.stats["misses"] += len(missing)
        started = time.perf_counter()
        net = extractor(model, plan.cut if "cut" in wanted else None)
        try:
            computed = _predict(net, [splits[i] for i in missing], [keys[i] for i in missing], batch_size)
        except _DiskFull as exc:  # a full or read-only disk costs the reuse, never the trial
            _warn_disk(exc)
            with using("memory", max_mb=settings().max_bytes // 2**20):
                computed = _predict(net, [splits[i] for i in missing], [keys[i] for i in missing], batch_size)
        STORE.stats["computed_seconds"] += time.perf_counter() - started
        for i, outputs in zip(missing, computed):
            for name in keys[i]:
                if found[i][name] is None:
                    found[i][name] = outputs[name]
    return found


class _DiskFull(Exception):
    pass


def _warn_disk(exc) -> None:
    if "disk" not in _announced:
        _announced.add("disk")
        print(f"warning: cannot persist features in {FeatureStore.folder()}: {exc}; keeping them in memory")


class _Sink:
    """Where one computed output goes: an array in memory, or, where it is large (auto) or the mode is disk, a
    .npy file written batch by batch, so a large data set's tensors never sit in this process's memory; finish()
    stores it (STORE) and returns the array to use."""

    def __init__(self, key: str, shape: tuple, dtype, store: FeatureStore):
        self.key, self.shape, self.dtype, self.store = key, shape, np.dtype(dtype), store
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        mode = settings().mode
        self.file = None
        if mode == "disk" or (mode == "auto" and nbytes > AUTO_DISK_BYTES):
            self.path = FeatureStore.folder() / f"{key}.npy"
            self.tmp = self.path.with_name(f".{key}.{os.getpid()}.tmp")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.tmp, "wb")
                np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                                 "fortran_order": False, "shape": shape})
            except OSError as exc:
                self._drop()
                raise _DiskFull(exc.strerror) from exc
        self.array: np.ndarray | None = None

    def write(self, start: int, value: np.ndarray) -> None:
        if self.file is None:
            if start == 0 and len(value) == self.shape[0]:  # the whole array at once (put): no copy
                self.array = value
                return
            if self.array is None:
                self.array = np.empty(self.shape, self.dtype)
            self.array[start:start + len(value)] = value
            return
        try:
            self.file.write(np.ascontiguousarray(value, self.dtype).data)  # in order: batches come one after another
        except OSError as exc:
            self._drop()
            raise _DiskFull(exc.strerror) from exc

    def _drop(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        self.file = None
        self.tmp.unlink(missing_ok=True)

    def finish(self) -> np.ndarray:
        if self.file is None:
            self.store._keep(self.key, self.array)
            return self.array
        try:
            self.file.close()
            os.replace(self.tmp, self.path)  # another worker never reads half a file
        except OSError as exc:
            self._drop()
            raise _DiskFull(exc.strerror) from exc
        trim(self.path.parent, settings().disk_bytes, keep=self.path)
        mapped = settings().mode == "auto" or self.path.stat().st_size > AUTO_DISK_BYTES  # as FeatureStore.get
        array = np.load(self.path, mmap_mode="r" if mapped else None)
        self.store._keep(self.key, array)
        return array


def _predict(net: keras.Model, arrays: list, keys: list[dict], batch_size: int) -> list[dict]:
    """The network's outputs for each image array, batch by batch: the images are read a batch at a time
    (a view of the store: O(batch) memory) and each output goes to its _Sink. Every batch has one shape (the
    last is padded), so the network is traced once (a smaller batch would trace it again)."""
    forward = tf.function(lambda x: net(tf.cast(x, tf.float32), training=False))
    results = []
    for images, names in zip(arrays, keys):
        sinks: dict[str, _Sink] = {}
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            n = len(chunk)
            if n < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
            out = forward(chunk)
            named = dict(zip(("cut", "pool"), out)) if isinstance(out, (list, tuple)) else {"pool": out}
            for name, value in named.items():
                if name not in names:
                    continue
                value = keras.ops.convert_to_numpy(value)
                if name not in sinks:
                    sinks[name] = _Sink(names[name], (len(images), *value.shape[1:]), value.dtype, STORE)
                sinks[name].write(start, value[:n])
        results.append({name: sink.finish() for name, sink in sinks.items()})
    return results
