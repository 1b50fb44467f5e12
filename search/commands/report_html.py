"""`python -m search report-html`: a standalone HTML report of a study's plots (Optuna + plotly)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--study", default="default", help="study name (default: %(default)s)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/<study>.db)")
    parser.add_argument("--out", help="HTML file to write (default: report.html in the study's folder, "
                                      "beside its artifacts)")


def run(args) -> int:
    from search.report.html import write_html_report
    from search.study.artifacts import artifact_dir
    from search.study.storage import open_existing_study

    study, storage_url = open_existing_study(args.study, args.storage)
    out = write_html_report(study, args.out or artifact_dir(args.study).parent / "report.html")
    print(f"wrote {out}")
    return 0
