"""`python -m search bench-portfolio`: the candidates spaces/portfolio.yaml is chosen from, measured across data sets;
then warm start from the portfolio against cold start, on classes it never saw."""

from __future__ import annotations

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="image folder with one sub-folder per class (at least 4)")
    parser.add_argument("--weights", required=True, help="folder of official Keras no-top weight files, or imagenet")
    parser.add_argument("--stage", choices=("measure", "compare", "all"), default="all",
                        help="measure the candidates, compare warm and cold, or both (default %(default)s)")
    parser.add_argument("--sizes", type=int, nargs=2, default=(50, 150), metavar=("SMALL", "LARGE"),
                        help="images per class of the two seen data sets (default %(default)s)")
    parser.add_argument("--held-out", type=int, default=300, help="images per held-out class (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs per candidate (default %(default)s)")
    parser.add_argument("--size", type=int, default=4, help="portfolio entries to choose (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="study seeds of warm and of cold (default %(default)s)")
    parser.add_argument("--budget", type=float, default=240,
                        help="seconds per warm or cold study (default %(default)s)")
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy to reach (default %(default)s)")
    parser.add_argument("--name", default="portfolio", help="report and study prefix (default %(default)s)")


def run(args) -> int:
    from search.bench.portfolio import run as bench
    from search.device import configure_devices

    if args.budget <= 0 or args.seeds < 1 or args.size < 1 or args.epochs < 1 or min(args.sizes) < 2:
        raise UserError("--budget must be positive; --seeds, --size, --epochs at least 1; --sizes at least 2")
    print(f"device: {configure_devices()}", flush=True)
    report = bench(args.data, args.weights, args.stage, tuple(args.sizes), args.held_out, args.epochs, args.size,
                   args.seeds, args.budget, args.target, args.name)
    print(report.read_text())
    print(f"report: {report}")
    return 0
