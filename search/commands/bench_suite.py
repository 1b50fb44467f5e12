"""`python -m search bench-suite`: the default study against the best hand recipe, on several data sets and seeds."""

from __future__ import annotations

from search.errors import UserError


def _names(text: str, valid: tuple, what: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if n not in valid:
            raise UserError(f"--{what} {n!r}: valid: {', '.join(valid)}")
    return names


def add_arguments(parser) -> None:
    from search.bench.suite import ARMS, SETS

    parser.add_argument("--data", help="the tf_flowers folder (one sub-folder per class); not needed for shapes only")
    parser.add_argument("--weights", help="folder of official Keras no-top weight files (MobileNet family)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated, of: %(default)s")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of: %(default)s")
    parser.add_argument("--seeds", type=int, default=3, help="split and study seeds 0..N-1 (default %(default)s)")
    parser.add_argument("--budget", type=float, default=300, help="seconds per study on the small sets (default %(default)s)")
    parser.add_argument("--flowers-budget", type=float, default=2700,
                        help="seconds per study on the full flowers set (default %(default)s)")
    parser.add_argument("--report", action="store_true", help="only write studies/bench/suite.md from the pieces done")


def run(args) -> int:
    from search.bench.suite import ARMS, SETS, run, write_report
    from search.device import configure_devices

    sets, arms = _names(args.sets, SETS, "sets"), _names(args.arms, ARMS, "arms")
    if args.seeds < 1 or args.budget <= 0 or args.flowers_budget <= 0:
        raise UserError("--seeds must be at least 1 and the budgets positive")
    if args.report:
        path = write_report()
    else:
        print(f"device: {configure_devices()}", flush=True)
        path = run(args.data, args.weights, sets, args.seeds, arms, args.budget, args.flowers_budget)
    print(path.read_text())
    print(f"report: {path}")
    return 0
