"""`python -m search export`: best.yaml (best-2.yaml ... with --top K) and trials.csv of a study."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--study", required=True, help="study name (store sqlite:///studies/<name>.db)")
    parser.add_argument("--storage", help="Optuna storage URL, if not the default store of --study")
    parser.add_argument("--top", type=int, default=1,
                        help="export the K best completed trials: best.yaml, best-2.yaml, ... (default 1)")
    parser.add_argument("--pick", default="best", metavar="RULE",
                        help="which trials count as best: best (highest accuracy, the default) or, in a "
                             "multi-objective study, cheapest-within:D (alias fastest-within:D): the lowest-cost "
                             "Pareto-front trial whose accuracy is within D (e.g. 0.01) of the best")
    parser.add_argument("--max-params", type=int, metavar="N",
                        help="only trials whose model has at most N parameters (head included)")


def run(args) -> int:
    from search.deliver.export import export

    written = export(args.study, args.storage, args.top, args.pick, args.max_params)
    configs = [p for p in written if p.suffix == ".yaml"]
    if len(configs) < args.top:
        by = f" by --pick {args.pick}" if args.pick != "best" else ""
        print(f"note: only {len(configs)} completed trial(s) to export{by} (asked for --top {args.top})")
    for path in written:
        print(f"wrote {path}")
    return 0
