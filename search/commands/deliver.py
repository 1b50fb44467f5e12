"""`python -m search deliver`: (re)build a study's delivered model from its kept fold models, test it once."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--study", required=True, help="study name (its kept models are in studies/<name>/members)")


def run(args) -> int:
    from search.config import check_study_name
    from search.deliver.ensemble import check_study, deliver

    check_study_name(args.study, "--study")
    check_study(args.study)
    deliver(args.study)
    return 0
