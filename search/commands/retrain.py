"""`python -m search retrain`: retrain an exported config, evaluate once on the test split, report."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="an exported config, e.g. studies/<study>/best.yaml")
    parser.add_argument("--seeds", type=int, default=1,
                        help="retrain N times with seeds seed, seed+1, ... and report mean ± std (default 1)")
    parser.add_argument("--fit", choices=("all", "train"), default="all",
                        help="all (default): train + validation, the search's epoch count; train: the train split "
                             "with early stopping on validation, as a single-split trial")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a param for this run only, e.g. --set augment=none (validated as in a study)")


def run(args) -> int:
    from search.deliver.retrain import retrain
    from search.device import configure_devices

    print(f"device: {configure_devices()}", flush=True)
    folder = retrain(args.config, args.seeds, args.set, fit=args.fit)
    print(f"wrote {folder / 'report.md'}")
    return 0
