"""`python -m search bench-peer`: this project against KerasTuner Hyperband, side by side, one report."""

from __future__ import annotations

import datetime

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="image folder with one sub-folder per class")
    parser.add_argument("--weights", required=True, help="folder of official Keras no-top weight files, or imagenet")
    parser.add_argument("--budget", type=float, default=600, help="search seconds per run (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="retrain seeds per winner (default %(default)s)")
    parser.add_argument("--name", help="report and study prefix (default peer-<date-time>, new each run)")
    parser.add_argument("--skip-cache-off", action="store_true",
                        help="leave out the third run (this project with the feature cache off): a third less time")


def run(args) -> int:
    from search.bench.peer import bench
    from search.device import configure_devices

    if args.budget <= 0 or args.seeds < 1:
        raise UserError("--budget must be positive and --seeds at least 1")
    print(f"device: {configure_devices()}", flush=True)
    name = args.name or "peer-" + datetime.datetime.now().strftime("%Y%m%d-%H%M")
    report = bench(args.data, args.weights, args.budget, args.seeds, name, cache_off=not args.skip_cache_off)
    print(report.read_text())
    print(f"report: {report}")
    return 0
