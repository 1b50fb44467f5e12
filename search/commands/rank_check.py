"""`python -m search rank-check`: how well a study's LogME ranking agreed with its fine-tuned accuracies.

COMPLETE trials grouped by (backbone, alpha, image size); per group the best validation accuracy (and the mean
of the top 3) against its LogME (the study's stored ranking, else computed now); Kendall's tau over the groups.
Written to studies/<name>/rank_check.md. See search/study/prerank.py.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--study", required=True, help="study name (store sqlite:///studies/<name>.db)")
    parser.add_argument("--storage", help="Optuna storage URL, if not the default store of --study")
    parser.add_argument("--recompute", action="store_true",
                        help="compute every group's LogME now, ignoring the ranking stored by study.rank")
    parser.add_argument("--out", help="Markdown file (default: studies/<name>/rank_check.md)")


def run(args) -> int:
    from pathlib import Path

    import optuna

    from search.deliver.export import output_dir
    from search.study.prerank import agreement_markdown, check_agreement
    from search.study.storage import open_existing_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = open_existing_study(args.study, args.storage)
    table = agreement_markdown(check_agreement(study, recompute=args.recompute))
    print(table, end="")
    out = Path(args.out) if args.out else output_dir(args.study) / "rank_check.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"wrote {out}")
    return 0
