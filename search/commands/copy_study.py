"""`python -m search copy-study`: copy a study, trials and attributes, to another storage (optuna.copy_study).

For a user who outgrows SQLite: `--from sqlite:///studies/x.db --to postgresql://...` keeps the history, so
workers on several machines go on from it. The source is only read. Per-trial artifacts (figures, CSV)
are files under studies/<study>/artifacts, found the same way from either storage on this machine.
"""

from __future__ import annotations

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="source", required=True, help="storage URL to copy from")
    parser.add_argument("--to", dest="target", required=True, help="storage URL to copy to")
    parser.add_argument("--study", required=True, help="study name in the source")
    parser.add_argument("--to-study", help="name in the target (default: the same)")


def run(args) -> int:
    import optuna

    from search.study.storage import open_storage

    target_name = args.to_study or args.study
    if args.source == args.target and target_name == args.study:
        raise UserError("--from and --to are the same storage: give --to-study a new name")
    source = open_storage(args.source, must_exist=True)
    names = sorted(s.study_name for s in source.get_all_studies())
    if args.study not in names:
        raise UserError(f"no study {args.study!r} in {args.source}; studies there: {', '.join(names) or 'none'}")
    target = open_storage(args.target)
    if target_name in {s.study_name for s in target.get_all_studies()}:
        raise UserError(f"study {target_name!r} already exists in {args.target}; nothing copied "
                        f"(pick --to-study NAME)")
    optuna.copy_study(from_study_name=args.study, from_storage=source, to_storage=target, to_study_name=target_name)
    copied = optuna.load_study(study_name=target_name, storage=target)
    print(f"copied study {args.study!r} ({len(copied.trials)} trials) from {args.source} to {args.target}"
          + (f" as {target_name!r}" if target_name != args.study else ""))
    return 0
