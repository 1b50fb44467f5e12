"""`python -m search worker`: one worker on a shared study (run by `workers`, or by hand on another machine).

It takes queued trials until the queue is empty; `--n-trials N` first tops the queue up to N. See
search/study/workers.py for the queue and search/study/storage.py for heartbeats and recovery.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from search.errors import UserError

DEFAULT_SPACE = "spaces/default.yaml"


def add_common(parser) -> None:
    """Arguments shared with `workers`."""
    parser.add_argument("--space", default=DEFAULT_SPACE, help="space YAML (default: %(default)s)")
    parser.add_argument("--name", help="study name (overrides study.name)")
    parser.add_argument("--storage", help="storage URL: journal:///studies/x.log (one machine), "
                                          "postgresql://user@host/db (several); default sqlite:///studies/<name>.db")
    parser.add_argument("--timeout", type=float,
                        help="seconds after which a worker starts no new trial and stops its running one at the "
                             "next epoch end")
    parser.add_argument("--heartbeat-interval", type=int, default=30, metavar="S",
                        help="seconds between heartbeats of a running trial (default: %(default)s)")
    parser.add_argument("--grace-period", type=int, default=120, metavar="S",
                        help="a running trial without heartbeat for this long is failed and retried once "
                             "(default: %(default)s)")


def check_common(args) -> None:
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive seconds, got {args.timeout}")
    if args.heartbeat_interval < 1:
        raise UserError(f"--heartbeat-interval must be at least 1 second, got {args.heartbeat_interval}")
    if args.grace_period <= args.heartbeat_interval:
        raise UserError(f"--grace-period ({args.grace_period}) must be longer than --heartbeat-interval "
                        f"({args.heartbeat_interval})")


def add_arguments(parser) -> None:
    add_common(parser)
    parser.add_argument("--n-trials", type=int, help="top the study's queue up to this many trials first "
                                                     "(default: only take what is queued)")
    parser.add_argument("--worker-index", type=int, help="distinct per worker: its sampler seed derives "
                                                         "from the study seed and this (default: from host and pid)")
    parser.add_argument("--threads", type=int, help="TensorFlow CPU threads (default: all cores)")
    parser.add_argument("--max-trials", type=int, metavar="K",
                        help="stop after K trials (`workers --recycle K` starts a fresh process for the rest)")
    parser.add_argument("--no-prepare", action="store_true", help=argparse.SUPPRESS)  # the launcher did it


def run(args) -> int:
    check_common(args)
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.max_trials is not None and args.max_trials < 1:
        raise UserError(f"--max-trials must be at least 1, got {args.max_trials}")
    from search.study.workers import limit_threads

    if args.threads:
        limit_threads(args.threads)  # before anything else starts TensorFlow
    # Ctrl-C as forwarded by `workers`, even when started from a shell that ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import optuna

    from search.device import configure_devices
    from search.errors import TrialError
    from search.space import load_space
    from search.study import prerank
    from search.study.artifacts import ArtifactReporter, artifact_dir
    from search.study.objective import Objective, StopAfterFailures
    from search.study.run import prepare, print_trial
    from search.study.storage import Heartbeat
    from search.study.workers import queue_trials, recover, work

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    space = load_space(args.space).with_study(name=args.name, storage=args.storage)
    url, me = space.study.storage_url, f"[w{args.worker_index if args.worker_index is not None else os.getpid()}]"
    print(f"{me} device: {configure_devices()}" + (f", {args.threads} thread(s)" if args.threads else ""),
          flush=True)
    if not args.no_prepare:
        prepare(space)
    heartbeat = Heartbeat(args.heartbeat_interval, args.grace_period)
    study = open_worker_study(space, heartbeat, args.worker_index)
    space = prerank.restricted(space, study)  # study.rank's top_k, as the study's creator recorded it
    recover(study, log=lambda line: print(f"{me} {line}", flush=True))
    if args.n_trials:
        added, queued = queue_trials(study, args.n_trials)
        print(f"{me} queued {added} new trial(s); {queued} in the queue", flush=True)
    reporter = ArtifactReporter(artifact_dir(space.study.name))
    started, done = time.perf_counter(), []

    def line(study, trial):
        done.append(trial.number)
        print_trial(study, trial, prefix=f"{me} ")
        if args.max_trials and len(done) >= args.max_trials:
            study.stop()  # this process is done; a recycling launcher starts a fresh one for the queue's rest

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    work(study, Objective(space, [reporter], deadline, budget_s=args.timeout), heartbeat, timeout=args.timeout,
         callbacks=[line, StopAfterFailures()], catch=(TrialError,),
         log=lambda text: print(f"{me} {text}", flush=True))
    print(f"{me} done: {len(done)} trial(s) in {time.perf_counter() - started:.0f}s", flush=True)
    if not done and not args.n_trials:
        print(f"{me} the queue was empty: queue trials with --n-trials N here, or run `make workers`", flush=True)
    return 0


def open_worker_study(space, heartbeat, index):
    """The study on a queue_only storage with heartbeats, and this worker's own sampler seed."""
    from search.study.run import make_sampler, open_study
    from search.study.storage import open_storage
    from search.study.workers import worker_seed

    storage = open_storage(space.study.storage_url, heartbeat=heartbeat, queue_only=True)
    sampler = make_sampler(space, seed=worker_seed(space.study.seed, index), parallel=True)
    return open_study(space, storage=storage, sampler=sampler)
