"""`python -m search bench` (`make bench`): plain vs cached training side by side, memory per trial, or trials
as the data set grows (--scale)."""

from __future__ import annotations

from pathlib import Path

from search.errors import UserError


def add_arguments(parser) -> None:
    add = parser.add_argument
    add("--data", default="builtin:shapes", help="dataset spec or class-folder path (default: %(default)s)")
    add("--weights", default="builtin", help="imagenet | none | builtin | a .h5 file (default: %(default)s)")
    add("--backbone", help="default: read from a keras.applications weights file name, else tiny_cnn")
    add("--alpha", type=float, help="width multiplier (default: from the weights file name, else 1.0)")
    add("--size", type=int, help="image side in pixels (default: 32 for tiny_cnn, else 128)")
    add("--epochs", type=int, default=10, help="epochs per trial, both phases (default: %(default)s)")
    add("--warmup-epochs", type=int, default=3, help="head warm-up epochs (default: %(default)s)")
    add("--unfreeze-blocks", type=int, default=2, help="top blocks trained in (c) (default: %(default)s)")
    add("--finetune-lr", type=float, default=1e-4, help="Adam learning rate in (c) (default: %(default)s)")
    add("--batch-size", type=int, default=32, help="(default: %(default)s)")
    add("--memory", action="store_true", help="instead: resident memory after each of --trials trials")
    add("--trials", type=int, default=20, help="trials of --memory (default: %(default)s)")
    add("--space", default="spaces/default.yaml", help="space of --memory (default: %(default)s)")
    add("--scale", action="store_true", help="instead: trials on --data and on larger folders of its crops, "
                                             "each in a fresh process, with its memory (search/bench/scale.py)")
    add("--scale-sizes", default="3670,15000,30000", help="images per folder of --scale (default: %(default)s)")
    add("--out", help="output folder (default: <studies>/bench)")


def run(args) -> int:
    from search.bench import cache as bench
    from search.config import studies_dir

    out = Path(args.out) if args.out else studies_dir() / "bench"
    if args.scale:
        paths = _scale(args, out)
    elif args.memory:
        if args.trials < 1:
            raise UserError(f"--trials must be at least 1, got {args.trials}")
        rows = bench.memory_bench(args.space, args.trials)
        summary = bench.memory_summary(rows)
        print(summary)
        paths = bench.write_tables(out, "memory", rows, bench.MEMORY_COLUMNS,
                                   f"Resident memory after each of {len(rows)} trials ({args.space})", [summary])
    else:
        base = _base_config(args)
        rows = bench.speed_bench(base, args.epochs, args.warmup_epochs, args.unfreeze_blocks, args.finetune_lr)
        finetune = args.epochs - args.warmup_epochs
        notes = [f"Head only: freeze=frozen, {args.warmup_epochs} warm-up + {finetune} epochs. "
                 f"Top blocks: unfreeze_blocks={args.unfreeze_blocks}, Adam {args.finetune_lr:g} in phase 2. "
                 "Early stopping off, batch order the same on every path. Speed-ups are over the plain row of the "
                 "same group; trial_s is wall time (build, feature extraction, fit, final evaluation) and cpu_s "
                 "the process's CPU time for the same (steadier when other processes share the machine); the "
                 "s_per_epoch columns are Keras epochs only (phase 2: the fine-tuning epochs)."]
        title = f"Feature cache benchmark: {base.backbone} on {base.dataset} at {base.image_size} px"
        paths = bench.write_tables(out, "speed", rows, bench.SPEED_COLUMNS, title, notes)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _scale(args, out: Path) -> list[Path]:
    from search.bench import cache as bench
    from search.bench import scale

    try:
        sizes = tuple(int(n) for n in args.scale_sizes.split(","))
    except ValueError:
        raise UserError(f"--scale-sizes {args.scale_sizes!r}: expected whole numbers, e.g. 3670,15000,30000") from None
    if min(sizes) < 1:
        raise UserError(f"--scale-sizes {args.scale_sizes!r}: every size must be at least 1")
    if args.data.startswith(("builtin:", "tfds:")) or args.data.lower().endswith(".csv"):
        raise UserError(f"--scale needs a class-folder --data to crop from, got {args.data!r}")
    args.size = args.size or 224
    cfg = _base_config(args)
    base = {k: getattr(cfg, k) for k in ("image_size", "backbone", "weights", "alpha", "batch_size")}
    rows = scale.bench(Path(args.data), base, sizes, out / "scale", args.epochs, args.warmup_epochs,
                       args.unfreeze_blocks)
    notes = [f"{cfg.backbone} alpha {cfg.alpha} at {cfg.image_size} px; {args.warmup_epochs} warm-up + "
             f"{args.epochs - args.warmup_epochs} epochs a trial, early stopping off; split 75/10/15. "
             "load_s: the data set loaded (process 1: decoded into the store; process 2: mapped from it). "
             "trial_s: build, frozen outputs, fit, evaluation. peak_rss_mib: VmHWM, every resident page; "
             "peak_anon_mib: the process's own memory (RssAnon) — see search/bench/scale.py."]
    return bench.write_tables(out, "scale", rows, scale.COLUMNS, "Trials as the data set grows", notes)


def _base_config(args):
    from search.bench.cache import infer_backbone
    from search.config import TrialConfig
    from search.models.backbones import BACKBONES

    backbone, alpha = args.backbone, args.alpha
    if backbone is None:
        if args.weights in ("builtin", "none", "imagenet"):
            backbone = "tiny_cnn" if args.weights != "imagenet" else None
            if backbone is None:
                raise UserError("--weights imagenet needs --backbone")
        else:
            backbone, inferred = infer_backbone(args.weights)
            alpha = alpha if alpha is not None else inferred
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if args.weights not in ("builtin", "none", "imagenet") and not Path(args.weights).is_file():
        raise UserError(f"weights file {args.weights!r} does not exist")
    size = args.size or (32 if backbone == "tiny_cnn" else 128)
    if size < BACKBONES[backbone].min_size:
        raise UserError(f"--size {size} is below {backbone}'s minimum input size {BACKBONES[backbone].min_size}")
    if not 0 <= args.warmup_epochs < args.epochs:
        raise UserError(f"--warmup-epochs must be in [0, --epochs), got {args.warmup_epochs} of {args.epochs}")
    if args.unfreeze_blocks > BACKBONES[backbone].num_blocks:
        raise UserError(f"--unfreeze-blocks {args.unfreeze_blocks} exceeds {backbone}'s "
                        f"{BACKBONES[backbone].num_blocks} blocks")
    for name in ("unfreeze_blocks", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.finetune_lr > 0:
        raise UserError(f"--finetune-lr must be positive, got {args.finetune_lr}")
    return TrialConfig(dataset=args.data, image_size=size, backbone=backbone, weights=args.weights,
                       alpha=1.0 if alpha is None else alpha, batch_size=args.batch_size)
