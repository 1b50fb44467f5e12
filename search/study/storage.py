"""Open an Optuna storage from its URL. No Keras here: the dashboard, `recover` and `copy-study` start fast.

  sqlite:///studies/x.db        one process at a time (WAL and a long busy timeout, so a dashboard can read)
  journal:///studies/x.log      Optuna's JournalStorage on a file: several processes on one host
  postgresql://user@host/db     RDBStorage on a server (psycopg2): several hosts; mysql+pymysql:// too
Paths after `sqlite:///` and `journal:///` are relative unless they start with `/` (`journal:////tmp/x.log`).

Heartbeats (optional): a process running a trial records one every `interval` seconds; a RUNNING trial
whose heartbeat is older than `grace` is stale, and Study.optimize (or `recover`) fails it and re-queues
its parameters once (RetryHeartbeatStaleTrialCallback). RDB storages have this in Optuna; the journal
storage gets the same interface below, plus a faster rule for one host: a heartbeat from this host whose
process is gone is stale at once.

queue_only: the storage refuses to create a trial out of nothing (QueueEmpty), so `study.ask()` can only
pop a queued (WAITING) trial. That is how workers share an exact total (search/study/workers.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from search.config import check_study_name, default_storage_url
from search.errors import UserError


# A dashboard or another reader may poll the file while trials are written: WAL lets readers and the
# writer proceed side by side, and a writer that still meets a lock waits this long instead of SQLite's 5 s.
def sqlite_timeout() -> float:
    """Seconds a writer waits for a lock (TRANSFER_SEARCH_SQLITE_TIMEOUT, default 60), read at each open."""
    return float(os.environ.get("TRANSFER_SEARCH_SQLITE_TIMEOUT", "60"))
HEARTBEAT_ATTR = "heartbeat"  # journal storage: trial system attr {host, pid, pid_started, start, time}
HOST = socket.gethostname()


@dataclass(frozen=True)
class Heartbeat:
    interval: int = 30  # seconds between heartbeats of a running trial
    grace: int = 120  # a RUNNING trial silent for longer than this is stale (its worker died)


class QueueEmpty(Exception):
    """No queued (WAITING) trial is left; raised instead of creating a new trial (queue_only storages)."""


def shown(url: str) -> str:
    """The URL for messages: a password in it becomes *** (better kept in ~/.pgpass or PGPASSWORD)."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def file_path(url: str) -> Path | None:
    """The file of a sqlite:/// or journal:/// URL (None for a server or an in-memory database)."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme) and ":memory:" not in url:
            return Path(url[len(scheme):])
    return None


def study_url(name: str, storage: str | None = None) -> str:
    """The URL of study `name`: `storage` when given, else the default SQLite file."""
    return storage or default_storage_url(name)


def find_study(name: str, storage: str | None = None, heartbeat: Heartbeat | None = None
               ) -> tuple[optuna.storages.BaseStorage, str, int]:
    """(storage, URL, study id) of an existing study, or a one-line UserError; never creates a store or study."""
    check_study_name(name, "--study")
    url = study_url(name, storage)
    path = file_path(url)
    if path is not None and not path.is_file():
        raise UserError(f"no study store at {str(path)!r}: run the study first (make study), or pass --storage")
    store = open_storage(url, heartbeat=heartbeat)
    names = sorted(s.study_name for s in store.get_all_studies())
    if name not in names:
        raise UserError(f"no study {name!r} in {shown(url)}; studies there: {', '.join(names) or 'none'}")
    return store, url, store.get_study_id_from_name(name)


def open_existing_study(name: str, storage: str | None = None, heartbeat: Heartbeat | None = None
                        ) -> tuple[optuna.Study, str]:
    """(an existing study, its URL), or a one-line UserError (find_study)."""
    store, url, _ = find_study(name, storage, heartbeat)
    return optuna.load_study(study_name=name, storage=store), url


def open_storage(url: str, heartbeat: Heartbeat | None = None, queue_only: bool = False,
                 must_exist: bool = False) -> optuna.storages.BaseStorage:
    """The storage for `url`; any failure is a one-line UserError. must_exist: refuse to create a file."""
    path = file_path(url)
    if url.startswith("journal:") and (path is None or not str(path)):
        raise UserError(f"storage {url!r}: a journal URL is journal:///relative/path.log or journal:////abs/path.log")
    if path is not None:
        if must_exist and not path.is_file():
            raise UserError(f"no study store at {str(path)!r}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the study folder {str(path.parent)!r}: {exc.strerror}") from None
    try:
        if url.startswith("journal:"):
            storage = _JournalStorage(JournalFileBackend(str(path)), heartbeat)
        else:
            storage = _open_rdb(url, path, heartbeat)
    except UserError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200].replace(url, shown(url))
        raise UserError(f"cannot open storage {shown(url)!r}: {reason}") from None
    storage.queue_only = queue_only
    return storage


def _open_rdb(url: str, path: Path | None, heartbeat: Heartbeat | None) -> RDBStorage:
    # SQLAlchemy 2.1 reads a bare postgresql:// as the psycopg (3) driver; the project ships psycopg2
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            url = "postgresql+psycopg2://" + url[len(bare):]
    engine_kwargs = None
    if path is not None:  # an SQLite file
        try:
            _use_wal(path)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open the SQLite study file {str(path)!r}: {exc}") from None
        engine_kwargs = {"connect_args": {"timeout": sqlite_timeout()}}
    options = {}
    if heartbeat is not None:
        options = dict(heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace,
                       heartbeat_stale_trial_callback=retry_once())
    # Several workers that start together on a new database race to create its tables; the loser retries.
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return _RDBStorage(url, engine_kwargs=engine_kwargs, **options)
        except (IntegrityError, ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _use_wal(path: Path) -> None:
    """Switch the file to write-ahead logging (persistent; a no-op when it already is)."""
    with contextlib.closing(sqlite3.connect(path, timeout=sqlite_timeout())) as con:
        con.execute("PRAGMA journal_mode=WAL")


class _RDBStorage(RDBStorage):
    queue_only = False

    # Optuna wraps an RDBStorage in _CachedStorage, which creates trials through this (private) method.
    def _create_new_trial(self, study_id, template_trial=None):
        if self.queue_only and template_trial is None:
            raise QueueEmpty()
        return super()._create_new_trial(study_id, template_trial)


class _JournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage with queue_only and Optuna's heartbeat interface (beats are trial system attrs)."""

    queue_only = False

    def __init__(self, backend, heartbeat: Heartbeat | None):
        super().__init__(backend)
        self._heartbeat = heartbeat

    def create_new_trial(self, study_id, template_trial=None):
        if self.queue_only and template_trial is None:
            raise QueueEmpty()
        return super().create_new_trial(study_id, template_trial)

    def record_heartbeat(self, trial_id: int) -> None:
        import psutil

        start = self.get_trial(trial_id).datetime_start
        beat = {"host": HOST, "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
                "start": start.timestamp() if start else None, "time": time.time()}
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, beat)
        except UpdateFinishedTrialError:
            pass  # another worker judged this trial dead meanwhile; its end is recorded already

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if is_stale(t, self._heartbeat.grace, now)]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat.interval if self._heartbeat else None

    def get_heartbeat_stale_trial_callback(self):
        return retry_once() if self._heartbeat else None


def retry_once() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that queues a failed trial again with the same params, at most once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=1)


def requeue_interrupted(study: optuna.Study, number: int | None, log=print) -> None:
    """An interrupted trial (Ctrl-C, SIGTERM) is failed if still running and queued again with its params, so
    the next run (a resume, a worker) runs it: its config did not fail, the user stopped it. Every time: an
    interrupt is never the config's fault, unlike a dead worker's trial (retried once)."""
    def get():
        return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)

    trial = None if number is None else get()
    if trial is None or trial.state not in (TrialState.RUNNING, TrialState.FAIL):
        return
    if trial.state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)
        trial = get()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
    log(f"trial {number} interrupted: re-queued with the same params")


def is_stale(trial: optuna.trial.FrozenTrial, grace: float, now: float) -> bool:
    """A RUNNING journal trial whose worker is gone: its process died (same host), or it has been silent
    for longer than `grace` seconds. A retried trial carries its predecessor's beat (the retry callback
    copies system attrs); a beat counts only if it was recorded for this trial's own start."""
    start = trial.datetime_start.timestamp() if trial.datetime_start else now
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if not beat or beat.get("start") != start:
        return now - start > grace
    if beat["host"] == HOST and not _alive(beat["pid"], beat["pid_started"]):
        return True
    return now - beat["time"] > grace


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        # a zombie is dead; a different creation time is a new process that reused the pid
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started) < 1
    except psutil.NoSuchProcess:
        return False


def fail_stale_trials(study: optuna.Study) -> list[tuple[optuna.trial.FrozenTrial, int | None]]:
    """Fail the study's stale RUNNING trials and re-queue each once; [(failed trial, retry number or None)]."""
    before = {t.number for t in study.get_trials(deepcopy=False)}
    running = {t._trial_id: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = study.get_trials(deepcopy=False)
    failed = [t for t in after if t._trial_id in running and t.state == TrialState.FAIL]
    retries = {t.system_attrs.get("failed_trial"): t.number for t in after
               if t.number not in before and t.state == TrialState.WAITING}
    return [(t, retries.get(t.system_attrs.get("failed_trial", t.number))) for t in failed]
