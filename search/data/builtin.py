"""The offline default's data: two procedurally drawn image tasks (tiny_cnn, search/models/tiny_cnn.py, is
pretrained on the first).

No network and no shared folder on a user's machine, yet the default study must be a genuine transfer.
So the project brings two procedurally drawn tasks of 32x32 colour images:
  - source ("shapes-source"): 8 shape classes, 400 images each; tiny_cnn is pretrained on it once and
    the weights are cached under studies/_pretrained/ (about a minute on 2 CPU cores);
  - target ("shapes"): 5 *other* shape classes with only 200 images each, on cluttered backgrounds.
The target classes never appear in the source task, so what transfers is the features, as with ImageNet.
Everything is deterministic in the seed: the same arrays on every machine.
"""

from __future__ import annotations

import numpy as np

SOURCE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "hbars", "vbars", "checker")
TARGET_CLASSES = ("ellipse", "hollow_square", "hollow_triangle", "l_shape", "two_discs")
TASKS = {
    "shapes-source": (SOURCE_CLASSES, 400, 1),
    "shapes": (TARGET_CLASSES, 200, 1),
}
SIZE = 32


def _mask(kind: str, u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one shape in rotated, centred coordinates (u, v) with radius r (pixels)."""
    a, b = np.abs(u), np.abs(v)
    w = max(1.5, r * 0.28)
    if kind == "circle":
        return u**2 + v**2 < r**2
    if kind == "ring":
        d = np.sqrt(u**2 + v**2)
        return (d < r) & (d > r * 0.6)
    if kind == "square":
        return np.maximum(a, b) < r * 0.8
    if kind == "triangle":
        return (v < r * 0.6) & (v > -r + 1.7 * a)
    if kind == "cross":
        return ((a < w) & (b < r)) | ((b < w) & (a < r))
    if kind == "hbars":
        return (np.maximum(a, b) < r) & (np.sin(v * 1.2) > 0)
    if kind == "vbars":
        return (np.maximum(a, b) < r) & (np.sin(u * 1.2) > 0)
    if kind == "checker":
        return (np.maximum(a, b) < r) & (np.sin(u * 0.9) * np.sin(v * 0.9) > 0)
    if kind == "ellipse":
        ratio = rng.uniform(0.3, 0.45)
        return (u / r) ** 2 + (v / (r * ratio)) ** 2 < 1
    if kind == "hollow_square":
        m = np.maximum(a, b)
        return (m < r * 0.85) & (m > r * 0.5)
    if kind == "l_shape":
        return ((u > -r) & (u < -r + 2 * w) & (b < r)) | ((v < r) & (v > r - 2 * w) & (a < r))
    if kind == "hollow_triangle":
        outer = (v < r * 0.6) & (v > -r + 1.7 * a)
        inner = (v < r * 0.25) & (v > -r * 0.45 + 1.7 * a)
        return outer & ~inner
    if kind == "two_discs":
        small = (r * 0.38) ** 2
        return ((u - r * 0.55) ** 2 + v**2 < small) | ((u + r * 0.55) ** 2 + v**2 < small)
    raise ValueError(kind)


def _draw(kind: str, rng: np.random.Generator, clutter: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = rng.uniform(0, 255, 3) * np.ones((SIZE, SIZE, 3), np.float32)
    img += rng.normal(0, 18, (SIZE, SIZE, 3))
    for _ in range(clutter):  # a small distracting square that is not the class
        cx, cy, half = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(1.0, 2.0)
        img[(np.abs(xx - cx) < half) & (np.abs(yy - cy) < half)] = rng.uniform(0, 255, 3)
    r = rng.uniform(7, 12)
    cx, cy = rng.uniform(r * 0.8, SIZE - r * 0.8, 2)
    t = rng.uniform(0, 2 * np.pi) if kind not in ("hbars", "vbars") else rng.uniform(-0.2, 0.2)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - img.mean((0, 1))).sum() < 120:  # keep the shape visible
        colour = rng.uniform(0, 255, 3)
    img[_mask(kind, u, v, r, rng)] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def make_task(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, 32, 32, 3], labels int [N], class names) of a built-in task."""
    classes, per_class, clutter = TASKS[name]
    rng = np.random.default_rng([seed, len(classes), per_class])
    images = np.stack([_draw(kind, rng, clutter) for kind in classes for _ in range(per_class)])
    labels = np.repeat(np.arange(len(classes)), per_class)
    return images, labels, list(classes)
