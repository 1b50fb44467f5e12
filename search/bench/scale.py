"""`make bench ARGS="--scale"`: trials on data sets of growing size, each in its own process, with its memory.

The larger folders are made from a source folder (the flowers) under <studies>/bench/scale/: distinct random
crops of its images (area 50-100 %, aspect 3:4-4:3, seeded per file and crop), JPEG quality 90, written once; a
folder of N images holds the first N crops of the largest one (symlinks), so only one set is encoded. The
source folder itself is the first row.

Per size, two fresh processes (python -m search.bench.scale <job>):
  1. the first use of the folder at that size: decodes it into the image store, then a head-only trial;
  2. a second process on the same folder: maps the store (its load time shows that it does not decode
     again), then a top-blocks trial with `augment: mirror` (the mirrors are a view, search.data.rows).
Children share one image store and feature cache, <root>/home, emptied when the bench starts. The parent
samples each child's /proc/<pid>/status every 0.1 s: peak RSS (VmHWM: every resident page, file-backed ones
included) and peak anonymous RSS (the process's own memory; mapped feature-cache pages are file-backed: the
kernel can drop them under pressure).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

SIZES = (3670, 15000, 30000)
COLUMNS = ("images", "train_images", "process", "trial", "load_s", "trial_s", "s_per_1k_images", "peak_rss_mib",
           "peak_anon_mib", "path", "val_accuracy")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def source_files(source: Path) -> list[tuple[str, Path]]:
    from search.errors import UserError

    if not source.is_dir():
        raise UserError(f"scale bench: source folder {str(source)!r} does not exist (one sub-folder per class)")
    files = [(c.name, f) for c in sorted(p for p in source.iterdir() if p.is_dir())
             for f in sorted(c.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"scale bench: source folder {str(source)!r} has no class folders with images")
    return files


def crops_folder(source: Path, n: int, root: Path) -> Path:
    """A class folder of n distinct crops of the source's images (written once; see the module doc)."""
    import numpy as np
    from PIL import Image

    files = [(f.parent.name, f) for f in balanced([f for _, f in source_files(source)])]  # partial rounds balanced
    folder = root / f"crops-{n}"
    if (folder / ".complete").is_file():
        return folder
    print(f"writing {n} crops of {source} into {folder}", flush=True)
    count = 0
    for crop in range(-(-n // len(files))):
        for i, (label, path) in enumerate(files):
            if count == n:
                break
            target = folder / label / f"{path.stem}_{crop}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([i, crop])
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                area, aspect = rng.uniform(0.5, 1.0) * w * h, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                im.crop((x, y, x + cw, y + ch)).save(target, quality=90)
            count += 1
    (folder / ".complete").write_text(str(n))
    return folder


def linked_folder(files: list[Path], n: int, folder: Path) -> Path:
    """The first n of `files` (class/name paths, in a class-balanced order), as symlinks."""
    if (folder / ".complete").is_file():
        return folder
    for path in files[:n]:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path.resolve())
    (folder / ".complete").write_text(str(n))
    return folder


def balanced(files: list[Path], crop_of=lambda p: 0) -> list[Path]:
    """Files ordered so that any first n hold every class in proportion (crop by crop, classes interleaved)."""
    by_class: dict[str, list[Path]] = {}
    for f in sorted(files):
        by_class.setdefault(f.parent.name, []).append(f)
    rank = {f: i / len(group) for group in by_class.values() for i, f in enumerate(group)}
    return sorted(files, key=lambda f: (crop_of(f), rank[f], f.parent.name))


def folders(source: Path, sizes: tuple, root: Path) -> dict[int, Path]:
    """{n: a class folder of n images}: the source itself, a linked subset of it, or crops of it."""
    files = [f for _, f in source_files(source)]
    made = {n: source if n == len(files) else linked_folder(balanced(files), n, root / f"subset-{n}")
            for n in sizes if n <= len(files)}
    bigger = sorted(n for n in sizes if n > len(files))
    if bigger:
        largest = crops_folder(source, bigger[-1], root)
        crops = balanced(list(largest.glob("*/*.jpg")), crop_of=lambda p: int(p.stem.rsplit("_", 1)[1]))
        made.update({n: linked_folder(crops, n, root / f"crops-{n}") for n in bigger[:-1]})
        made[bigger[-1]] = largest
    return made


# ------------------------------------------------------------------------------------------------ child


def child(job: dict) -> dict:
    """One process: load the data (decoding it or mapping the store), one trial, what it took."""
    from search.config import TrialConfig
    from search.data.datasets import load_search_data
    from search.training import cache
    from search.training.train import train

    cfg = TrialConfig.from_dict({**TrialConfig().to_dict(), **job["config"]})
    started = time.perf_counter()
    data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    result = train(cfg, data.train, data.val, data.class_names)
    return {"load_s": load_s, "trial_s": time.perf_counter() - started, "path": cache.last_plan.describe(),
            "val_accuracy": result.metrics["accuracy"], "train_images": len(data.train)}


class StatusPeaks:
    """Peak VmRSS and RssAnon of another process, from /proc/<pid>/status every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.rss, self.anon = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
            except (OSError, ValueError):
                return
            kib = lambda name: int(fields.get(name, "0 kB").split()[0])  # noqa: E731
            self.rss, self.anon = max(self.rss, kib("VmHWM") * 1024), max(self.anon, kib("RssAnon") * 1024)
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_child(job: dict, home: Path) -> dict:
    env = {**os.environ, "TRANSFER_SEARCH_HOME": str(home)}  # the bench's own image store and feature cache
    proc = subprocess.Popen([sys.executable, "-m", "search.bench.scale", json.dumps(job)], stdout=subprocess.PIPE,
                            text=True, env=env)
    peaks = StatusPeaks(proc.pid)
    out, _ = proc.communicate()
    peaks.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"scale bench child failed ({proc.returncode}): {job}")
    report = json.loads(out.strip().splitlines()[-1])
    return {**report, "peak_rss_mib": peaks.rss / 2**20, "peak_anon_mib": peaks.anon / 2**20}


def bench(source: Path, base: dict, sizes: tuple, root: Path, epochs: int, warmup: int, blocks: int) -> list[dict]:
    """Rows of the scaling table, smallest data set first. `base`: the TrialConfig fields every trial shares."""
    common = {**base, "warmup_epochs": warmup, "finetune_epochs": epochs - warmup, "early_stopping_patience": 0}
    kinds = [("first: decode + head only", {"freeze": "frozen", "augment": "none"}),
             ("second: map + top blocks, mirror", {"freeze": "top_blocks", "unfreeze_blocks": blocks,
                                                   "learning_rate": 1e-4, "augment": "mirror"})]
    rows, home = [], root / "home"
    shutil.rmtree(home, ignore_errors=True)  # every first process decodes: nothing from an earlier run
    for n, folder in sorted(folders(source, sizes, root).items()):
        for process, (trial, fields) in enumerate(kinds, start=1):
            report = run_child({"config": {**common, **fields, "dataset": str(folder)}}, home)
            row = {"images": n, "process": process, "trial": trial, **report,
                   "s_per_1k_images": report["trial_s"] / n * 1000}
            print(" | ".join(f"{k}={row[k]:.1f}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in COLUMNS),
                  flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
