"""Several worker processes on one study: an exact total of trials, killed workers recovered, a launcher.

The total is a queue. Whoever plans the run (the `workers` launcher, or a `worker --n-trials N`) puts
trials into the study as WAITING rows (`study.enqueue_trial({})`: nothing fixed, the sampler fills them in
when a worker takes one). A worker's storage is queue_only (search/study/storage.py): `study.ask()` may pop a
WAITING trial, and the storage pops atomically (a row lock on PostgreSQL, the log order of the journal),
but it can never create a trial from nothing, so N workers asking at once cannot overshoot. When the
queue is empty a worker stops. Trial rows = queued trials + retries of trials whose worker died.

No Keras here: the launcher's child handling and the tests of the queue run without TensorFlow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.study.record import TrialRecord, write
from search.study.storage import HOST, Heartbeat, QueueEmpty, fail_stale_trials, requeue_interrupted


def worker_seed(study_seed: int, index: int | None) -> int:
    """A sampler seed per worker, derived from the study's: workers with one seed propose the same params.
    index None (a worker started by hand): derived from this host and pid, so distinct but not repeatable."""
    key = zlib.crc32(f"{HOST}:{os.getpid()}".encode()) if index is None else index
    return int(np.random.SeedSequence([study_seed, key]).generate_state(1)[0])


def queue_trials(study: optuna.Study, total: int) -> tuple[int, int]:
    """Top the queue up to `total` WAITING trials (baselines and leftovers of an interrupted run count);
    returns (added, queued now)."""
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    added = max(0, total - waiting)
    for _ in range(added):
        study.enqueue_trial({})
    return added, waiting + added


def recover(study: optuna.Study, log=print) -> int:
    """Fail the RUNNING trials of dead workers and re-queue their params once; how many were failed."""
    found = fail_stale_trials(study)
    for trial, retry in found:
        again = f"re-queued as trial {retry}" if retry is not None else "not re-queued (it was a retry already)"
        log(f"recovered trial {trial.number} (worker {TrialRecord.of(trial).worker or '?'} is gone): "
            f"failed, {again}")
    return len(found)


class _Labelled:
    """The objective, recording which process runs each trial (and which trial an interrupt stopped)."""

    def __init__(self, objective):
        self.objective, self.current, self.interrupted = objective, None, None

    def __call__(self, trial: optuna.Trial):
        self.current = trial.number
        write(trial, worker=f"{HOST}:{os.getpid()}")
        try:
            return self.objective(trial)
        except KeyboardInterrupt:
            self.interrupted = trial.number
            raise


def work(study: optuna.Study, objective, heartbeat: Heartbeat, timeout: float | None = None,
         callbacks=(), catch=(), log=print) -> None:
    """Run queued trials until the queue is empty (and no dead worker's trial is left to retry), the
    timeout passes, or a callback stops the study. `study` must come from a queue_only storage."""
    deadline = None if timeout is None else time.monotonic() + timeout
    labelled = _Labelled(objective)
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            try:
                study.optimize(labelled, timeout=left, catch=catch, callbacks=list(callbacks))  # the objective collects
                return  # timeout, or a callback stopped the study
            except QueueEmpty:
                pass
            except UpdateFinishedTrialError as exc:  # a stalled worker taken for dead: its trial is retried
                log(f"warning: trial {labelled.current} was failed by another worker ({exc}); going on")
                continue
            if not _wait_for_retries(study, heartbeat, deadline, log):
                return
    except KeyboardInterrupt:
        requeue_interrupted(study, labelled.interrupted, log)
        raise


def _wait_for_retries(study: optuna.Study, heartbeat: Heartbeat, deadline: float | None, log) -> bool:
    """The queue is empty. A trial still RUNNING may belong to a worker that died: within the grace period
    it turns stale, and failing it queues a retry. Wait that long at most; True when there is work again.
    (A worker that dies later is recovered by the next run.)"""
    until = time.monotonic() + heartbeat.grace + 2 * heartbeat.interval
    told = False
    while True:
        recover(study, log)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        now = time.monotonic()
        if not running or now > until or (deadline is not None and now > deadline):
            return False
        if not told:
            log(f"queue empty; watching {len(running)} running trial(s) for up to {until - now:.0f}s "
                f"in case their worker died")
            told = True
        time.sleep(min(heartbeat.interval, 1.0))  # leave as soon as the last running trial ends


# --------------------------------------------------------------------------------- processes, threads


def threads_per_worker(workers: int) -> int:
    """CPU cores // workers (at least 1): N TensorFlow processes each using every core oversubscribe."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def limit_threads(threads: int) -> None:
    """TensorFlow's op thread pools; only possible before TensorFlow runs its first op."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def gpu_ids() -> list[str]:
    """The GPUs a worker can be pinned to: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def launch(commands: list[list[str]], envs: list[dict], restart=lambda i: False) -> tuple[list[int], bool]:
    """Start the processes in sessions of their own, forward SIGINT/SIGTERM to them (once: a terminal's
    Ctrl-C reaches only this process), wait for all; (exit codes, whether we were interrupted). A process
    that exits with status 0 is started again, same command, while `restart(its index)` says so."""
    start = lambda i: subprocess.Popen(commands[i], env=envs[i], start_new_session=True)  # noqa: E731
    procs = [start(i) for i in range(len(commands))]
    interrupted = False

    def forward(signum, _frame):
        nonlocal interrupted
        interrupted = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        settled: set[int] = set()  # processes that ended for good
        while True:  # poll, not wait(): a dead child is reaped at once
            for i, p in enumerate(procs):
                if p.poll() is not None and i not in settled:
                    if p.returncode == 0 and not interrupted and restart(i):
                        procs[i] = start(i)
                    else:
                        settled.add(i)
            if len(settled) == len(procs):
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return [p.returncode for p in procs], interrupted


def describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
