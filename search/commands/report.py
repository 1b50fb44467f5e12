"""`python -m search report`: per backbone x freezing strategy table (Markdown, CSV) and the HTML report."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--study", required=True, help="study name (store sqlite:///studies/<name>.db)")
    parser.add_argument("--storage", help="Optuna storage URL, if not the default store of --study")


def run(args) -> int:
    from search.commands import report_html
    from search.report.tables import write_report

    for path in write_report(args.study, args.storage):
        print(f"wrote {path}")
    args.out = None  # and the standalone HTML report with Optuna's plots, beside the tables
    return report_html.run(args)
