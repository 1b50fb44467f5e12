"""`python -m search report-html`: a standalone HTML report of a study's plots (Optuna + plotly)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--study", default="default", help="study name (default: %(default)s)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/<study>.db)")
    parser.add_argument("--out", help="HTML file to write (default: report.html in the study's folder, "
                                      "beside its artifacts)")


def run(args) -> int:
    import optuna

    from search.artifacts import artifact_dir
    from search.config import studies_dir
    from search.dashboard import open_storage
    from search.html_report import write_html_report

    storage_url = args.storage or f"sqlite:///{studies_dir() / args.study}.db"
    storage, _ = open_storage(args.study, storage_url)
    study = optuna.load_study(study_name=args.study, storage=storage)
    out = write_html_report(study, args.out or artifact_dir(storage_url, args.study).parent / "report.html")
    print(f"wrote {out}")
    return 0
