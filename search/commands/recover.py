"""`python -m search recover`: fail the RUNNING trials of dead workers and re-queue their params once.

Workers do this themselves when they start and before every trial; this is for a study nobody is running.
A trial is stale when its heartbeat is older than --grace-period; on a journal file also at once when its
worker ran on this host and that process is gone. Live workers' trials are left alone.
"""

from __future__ import annotations

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--study", default="default", help="study name (default: %(default)s)")
    parser.add_argument("--storage", help="storage URL (default sqlite:///studies/<study>.db)")
    parser.add_argument("--grace-period", type=int, default=120, metavar="S",
                        help="heartbeat age that makes a running trial stale (default: %(default)s, as workers)")


def run(args) -> int:
    from optuna.trial import TrialState

    from search.study.storage import Heartbeat, open_existing_study
    from search.study.workers import recover

    if args.grace_period < 2:
        raise UserError(f"--grace-period must be at least 2 seconds, got {args.grace_period}")
    study, _ = open_existing_study(args.study, args.storage, heartbeat=Heartbeat(interval=1, grace=args.grace_period))
    found = recover(study)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    print(f"study {args.study!r}: {found} stale trial(s) failed; {running} still running (workers alive)"
          if found else f"study {args.study!r}: no stale trials; {running} running")
    return 0
