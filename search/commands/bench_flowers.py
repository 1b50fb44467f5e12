"""`python -m search bench-flowers`: search, export, retrain and baselines on real photos, one report."""

from __future__ import annotations

import datetime

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="image folder with one sub-folder per class (tf_flowers)")
    parser.add_argument("--weights", required=True, help="folder of official Keras no-top weight files, or imagenet")
    parser.add_argument("--budget", type=float, default=2400, help="search seconds (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="retrain seeds per method (default %(default)s)")
    parser.add_argument("--baseline-size", type=int, default=224,
                        help="image size of the seeds' recipes (default %(default)s, the seeds' own)")
    parser.add_argument("--folds", default="auto",
                        help="study.validation.folds: auto (default: by data size), or K (1: one split)")
    parser.add_argument("--fit", choices=("all", "train"), default="all",
                        help="how the winner and the baselines are retrained (retrain --fit; default all)")
    parser.add_argument("--max-params", type=int, metavar="N",
                        help="search only backbones of at most N parameters and export the best trial whose whole "
                             "model fits (default: no limit)")
    parser.add_argument("--no-ablation", action="store_true",
                        help="skip retraining the winner with each fine-tuning knob turned back "
                             "(search.bench.flowers.PLAIN)")
    parser.add_argument("--name", help="study name (default flowers-<date-time>, a new study each run)")
    parser.add_argument("--space", default="spaces/flowers.yaml",
                        help="the searched space (default %(default)s); --data and --weights replace its own")


def _whole(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--folds {text!r}: expected auto or a whole number >= 1")
    return int(text)


def run(args) -> int:
    from search.bench.flowers import run as bench
    from search.device import configure_devices

    if args.budget <= 0 or args.seeds < 1:
        raise UserError("--budget must be positive and --seeds at least 1")
    name = args.name or "flowers-" + datetime.datetime.now().strftime("%Y%m%d-%H%M")
    print(f"device: {configure_devices()}", flush=True)
    folds = args.folds if args.folds == "auto" else _whole(args.folds)
    report = bench(args.data, args.weights, args.budget, args.seeds, name, args.baseline_size,
                   max_params=args.max_params, folds=folds, fit=args.fit,
                   ablate=not args.no_ablation, space_file=args.space)
    print(report.read_text())
    print(f"report: {report}")
    return 0
