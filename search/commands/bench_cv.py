"""`python -m search bench-cv`: one validation split against K folds, same budget, winners retrained and tested."""

from __future__ import annotations

import datetime

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--space", default="spaces/flowers.yaml", help="space file (default %(default)s)")
    parser.add_argument("--data", help="dataset (--set dataset=...); default: the space's")
    parser.add_argument("--weights", help="weights (--set weights=...); default: the space's")
    parser.add_argument("--budget", type=float, default=300, help="search seconds per study (default %(default)s)")
    parser.add_argument("--study-seeds", type=int, default=3, help="studies per validation mode (default %(default)s)")
    parser.add_argument("--top", type=int, default=10, help="trials of each study retrained (default %(default)s)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the seeds' recipes (needs MobileNetV2 weights)")
    parser.add_argument("--name", help="prefix of the studies (default cv-<date-time>)")


def run(args) -> int:
    from search.bench.selection import run as bench
    from search.device import configure_devices

    if args.budget <= 0 or args.study_seeds < 1 or args.top < 1:
        raise UserError("--budget must be positive, --study-seeds and --top at least 1")
    name = args.name or "cv-" + datetime.datetime.now().strftime("%Y%m%d-%H%M")
    print(f"device: {configure_devices()}", flush=True)
    report = bench(args.space, args.data, args.weights, args.budget, args.study_seeds, args.top, name,
                   with_baselines=not args.no_baselines and bool(args.data and args.weights))
    print(report.read_text())
    print(f"report: {report}")
    return 0
