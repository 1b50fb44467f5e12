"""`python -m search workers -n N`: N worker processes on one study, an exact total of trials between them.

Here, once: the space, data and weights are checked (tiny_cnn's pretraining cached), the study created or
resumed, dead workers' trials recovered, and the queue topped up to --n-trials (study.n_trials), the total
for all workers. Then N `worker` processes, each with cores // N TensorFlow threads and, on a machine with
GPUs, one GPU each (CUDA_VISIBLE_DEVICES, round robin). Ctrl-C and SIGTERM are passed on to them.
Exit status: 0 when every worker finished, 130 when interrupted, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import time

from search.commands.worker import add_common, check_common
from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("-n", "--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    add_common(parser)
    parser.add_argument("--n-trials", type=int, help="trials in this run, for all workers together "
                                                     "(overrides study.n_trials)")
    parser.add_argument("--threads", type=int, help="TensorFlow CPU threads per worker (default: cores // N)")
    parser.add_argument("--recycle", type=int, metavar="K",
                        help="end each worker process after K trials and start a fresh one while trials are "
                             "queued: memory stays flat over long studies (Keras/TensorFlow keep ~12 MiB a "
                             "trial); the feature cache goes to disk so the fresh process reuses it")


def run(args) -> int:
    check_common(args)
    if args.workers < 1:
        raise UserError(f"-n/--workers must be at least 1, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.recycle is not None and args.recycle < 1:
        raise UserError(f"--recycle must be at least 1, got {args.recycle}")
    from search.space import load_space
    from search.study.storage import file_path, is_sqlite, shown

    space = load_space(args.space).with_study(name=args.name, storage=args.storage)
    url, name = space.study.storage_url, space.study.name
    if args.workers > 1 and is_sqlite(url):
        journal = file_path(url).with_suffix(".log") if file_path(url) else f"studies/{name}.log"
        raise UserError(f"{args.workers} workers cannot share the SQLite store {shown(url)} (one writer at a time); "
                        f"use a journal file (--storage journal:///{journal}) on one machine, or PostgreSQL "
                        f"(--storage postgresql://user@host/db) for several")

    import optuna
    from optuna.trial import TrialState

    from search.commands.worker import open_worker_study
    from search.device import configure_devices
    from search.study.artifacts import save_study_note
    from search.study.plan import delivers
    from search.study.run import describe_data, prepare, summarize
    from search.study.storage import Heartbeat
    from search.study.workers import describe_exit, gpu_ids, launch, queue_trials, recover, threads_per_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = args.n_trials or space.study.n_trials
    print(f"device: {configure_devices()}", flush=True)
    prepare(space)  # once, before any worker: a bad dataset fails here, the pretraining is cached for all
    heartbeat = Heartbeat(args.heartbeat_interval, args.grace_period)
    study = open_worker_study(space, heartbeat, index=None)
    save_study_note(study, space)
    recover(study)
    added, queued = queue_trials(study, total)
    threads, gpus = args.threads or threads_per_worker(args.workers), gpu_ids()
    before = len(study.trials)
    print(f"study {name!r} in {shown(url)}: {args.workers} worker(s), {threads} CPU thread(s) each"
          + (f", GPUs {','.join(gpus)} round robin" if gpus else "")
          + f"; {queued} trial(s) queued ({added} new)", flush=True)
    print(describe_data(study, space), flush=True)

    commands, envs = [], []
    for i in range(args.workers):
        cmd = [sys.executable, "-m", "search", "worker", "--space", args.space, "--name", name, "--storage", url,
               "--worker-index", str(i), "--threads", str(threads), "--no-prepare",
               "--heartbeat-interval", str(args.heartbeat_interval), "--grace-period", str(args.grace_period)]
        if args.timeout:
            cmd += ["--timeout", str(args.timeout)]
        if args.recycle:
            cmd += ["--max-trials", str(args.recycle)]
        env = dict(os.environ)
        if args.recycle and env.get("TRANSFER_SEARCH_FEATURE_CACHE", "auto") in ("auto", "memory"):
            env["TRANSFER_SEARCH_FEATURE_CACHE"] = "disk"  # what one process computed, the next one maps
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        commands.append(cmd)
        envs.append(env)
    started = time.perf_counter()
    deadline = None if not args.timeout else time.monotonic() + args.timeout

    def again(i: int) -> bool:
        """Recycling: worker i ended after its K trials; a fresh process takes the queue's rest, if any."""
        if not args.recycle or (deadline is not None and time.monotonic() >= deadline):
            return False
        waiting = open_worker_study(space, heartbeat, index=None).get_trials(states=(TrialState.WAITING,))
        if waiting and deadline is not None:  # the fresh process gets what is left of the run's timeout
            at = commands[i].index("--timeout") + 1
            commands[i][at] = str(round(deadline - time.monotonic(), 1))
        return bool(waiting)

    codes, interrupted = launch(commands, envs, restart=again)
    seconds = time.perf_counter() - started

    study = open_worker_study(space, heartbeat, index=None)  # fresh: everything the workers wrote
    # taken from the queue in this run: what was queued, plus retries added meanwhile, minus what is left
    ran = queued + len(study.trials) - before - len(study.get_trials(states=(TrialState.WAITING,)))
    summarize(study, seconds)
    print(f"{ran} trial(s) run by {args.workers} worker(s) in {seconds:.0f}s: "
          f"{60 * ran / seconds:.2f} trials/minute", flush=True)
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    for i, code in failed:
        print(f"worker {i}: {describe_exit(code)}", file=sys.stderr, flush=True)
    if interrupted:
        print("interrupted: finished trials are stored, interrupted ones queued again; run the same command "
              "to go on", file=sys.stderr)
        return 130
    if delivers(space):  # from the fold models this machine's workers kept (another machine's: make deliver there)
        from search.deliver.ensemble import deliver

        deliver(name)
    return 1 if failed else 0
