"""Several workers on one study: a real PostgreSQL server and a journal file, an exact total of trials,
a worker killed with SIGKILL in the middle of a trial, recovery, resume, copy-study, refusals."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.config import study_dir
from tests.conftest import write

ROOT = Path(__file__).resolve().parents[1]
INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# Fixed-length tiny trials (no pruner): 1 warm-up + 2 fine-tuning epochs of tiny_cnn at 32 px, a few seconds.
# No screen (nor its focus stage): the tests count the store's rows, and a staged queue leaves waiting ones.
SPACE = """
study:
  name: {name}
  n_trials: {n_trials}
  seed: 3
  screen: false
  sampler: {{type: random}}
  pruner: {{type: none}}
  validation: {{folds: 1}}
params:
  dataset: builtin:shapes
  image_size: 32
  backbone: tiny_cnn
  weights: builtin
  warmup_epochs: 1
  finetune_epochs: 2
  early_stopping_patience: 5
  freeze: {{choices: [frozen, top_blocks, full]}}
  unfreeze_blocks: {{low: 1, high: 4}}
  optimizer: {{choices: [adam, sgd, rmsprop]}}
  learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}
  dropout: {{low: 0.0, high: 0.5}}
"""


# ------------------------------------------------------------------------------------------ fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (trust auth), stopped and deleted at teardown."""
    if not INITDB:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    bindir = Path(INITDB[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="ts-postgres-"))
    as_owner = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    subprocess.run(as_owner + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                               "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    subprocess.run(as_owner + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options,
                               "-w", "-t", "60", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_owner + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The built-in backbone's pretraining, once, before any worker process needs it (shared home)."""
    from search.space import load_space
    from search.study.run import prepare

    prepare(load_space(write(tmp_path_factory.mktemp("warm") / "s.yaml", SPACE.format(name="warm", n_trials=1))))


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _load(name, url):
    from search.study.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


@pytest.fixture(params=["journal", "postgresql"])
def shared_url(request, tmp_path):
    """A storage several processes can share: a journal file, or a database on the PostgreSQL server."""
    if request.param == "journal":
        return f"journal:///{tmp_path}/study.log"
    return request.getfixturevalue("postgres")


# ------------------------------------------------------------------------------- the cap, without Keras

RACER = """
import sys, time
import optuna
from search.study.storage import Heartbeat, open_storage
from search.study.workers import work

url, name, seed, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
optuna.logging.set_verbosity(optuna.logging.WARNING)
heartbeat = Heartbeat(1, 5)
study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=heartbeat, queue_only=True),
                          sampler=optuna.samplers.RandomSampler(seed=seed))
time.sleep(max(0.0, start - time.time()))  # all racers ask at the same moment

def objective(trial):
    time.sleep(0.01)
    return trial.suggest_float("x", 0, 1)

work(study, objective, heartbeat)
"""


@pytest.mark.slow
def test_racing_workers_reach_exactly_the_cap(shared_url):
    """Four processes that ask for trials at the same moments take exactly the queued total: no trial row
    beyond it, none twice. (MaxTrialsCallback alone checks after a trial, so racers overshoot.)"""
    from search.study.storage import open_storage
    from search.study.workers import queue_trials

    name, cap = "race", 40
    study = optuna.create_study(study_name=name, storage=open_storage(shared_url))
    assert queue_trials(study, cap) == (cap, cap)
    start = time.time() + 4
    racers = [subprocess.Popen([sys.executable, "-c", RACER, shared_url, name, str(i), str(start)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in racers]
    assert [p.returncode for p in racers] == [0] * 4, outputs
    trials = _load(name, shared_url).trials
    assert len(trials) == cap
    assert [t.number for t in trials] == list(range(cap))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= 3, workers  # they really ran side by side
    assert not any("locked" in o or "Error" in o for o in outputs), outputs


# ------------------------------------------------------------------------------ real workers, real trials


def _start_workers(url, name, folder, n_trials, workers=3, grace=5):
    space = write(folder / f"{name}.yaml", SPACE.format(name=name, n_trials=n_trials))
    log = open(folder / f"{name}.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "search", "workers", "-n", str(workers), "--space", str(space),
                             "--storage", url, "--heartbeat-interval", "1", "--grace-period", str(grace)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    return space, proc, log


def _finish(proc, log, timeout=300):
    proc.wait(timeout=timeout)
    log.seek(0)
    out = log.read()
    log.close()
    for bad in ("database is locked", "IntegrityError", "Traceback"):
        assert bad not in out, out
    return out


@pytest.mark.slow
def test_three_workers_on_postgres_reach_exactly_the_cap(postgres, warm, tmp_path):
    cap = 4
    _, proc, log = _start_workers(postgres, "pg3", tmp_path, n_trials=cap)
    out = _finish(proc, log)
    assert proc.returncode == 0, out
    trials = _load("pg3", postgres).trials
    assert len(trials) == cap  # not 3 x cap, and not one row more
    assert [t.number for t in trials] == list(range(cap))
    assert all(t.state == TrialState.COMPLETE and t.value == t.user_attrs["val_accuracy"] for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, out  # shared out, not run by one
    assert len({tuple(sorted(t.params.items())) for t in trials}) == cap  # distinct sampler seeds per worker
    assert f"{cap} trial(s) run by 3 worker(s)" in out


def _kill_a_worker_mid_trial(url, name, proc, out_path):
    """SIGKILL the process of a trial that has reported an epoch and has more to go; (trial, pid)."""
    from search.study.storage import open_storage

    storage = open_storage(url)  # one connection for all the polling
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, out_path.read_text()
        try:
            running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the launcher has not created the study yet
            running = []
        for trial in running:
            if len(trial.intermediate_values) == 1 and "worker" in trial.user_attrs:
                pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                return trial, pid
        time.sleep(0.1)
    pytest.fail("no trial was seen running")


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
@pytest.mark.slow
def test_a_killed_worker_loses_only_its_trial(kind, warm, tmp_path, request):
    """One of three workers is SIGKILLed mid-trial: the other two go on, the orphan is failed (heartbeat on
    PostgreSQL, dead pid on the journal) and run again with its params, nothing else is touched, and the
    study resumes afterwards."""
    url = request.getfixturevalue("postgres") if kind == "postgresql" else f"journal:///{tmp_path}/study.log"
    name, cap = f"kill_{kind}", 4
    space_file, proc, log = _start_workers(url, name, tmp_path, n_trials=cap)
    orphan, pid = _kill_a_worker_mid_trial(url, name, proc, tmp_path / f"{name}.out")
    killed_at = time.time()
    out = _finish(proc, log)
    assert proc.returncode == 1 and "killed by SIGKILL" in out, out  # the launcher says a worker died

    trials = _load(name, url).trials
    assert trials[orphan.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == 1, out
    retry = retries[0]
    assert retry.params == orphan.params and retry.state == TrialState.COMPLETE
    assert not retry.user_attrs["worker"].endswith(f":{pid}")
    assert len(trials) == cap + 1  # the queue, plus the one retry
    others = [t for t in trials if t.number != orphan.number]
    assert all(t.state == TrialState.COMPLETE and t.value == t.user_attrs["val_accuracy"] for t in others)
    after = [t for t in others if t.datetime_complete.timestamp() > killed_at]
    assert len({t.user_attrs["worker"] for t in after}) == 2, out  # both survivors went on

    from search.space import load_space
    from search.study.run import run_study

    run_study(load_space(space_file).with_study(storage=url), n_trials=1, reporters=())  # resumes
    resumed = _load(name, url).trials
    assert len(resumed) == cap + 2 and resumed[-1].state == TrialState.COMPLETE
    assert [t.value for t in resumed[:-1]] == [t.value for t in trials]


@pytest.mark.slow
def test_recycled_workers_run_each_batch_of_trials_in_a_fresh_process(warm, tmp_path):
    """`workers --recycle K`: a worker process ends after K trials and a fresh one takes the queue's rest
    (flat memory over long studies); the total is still exact, and the feature cache goes to disk."""
    space = write(tmp_path / "s.yaml", SPACE.format(name="recycled", n_trials=2))
    url = f"sqlite:///{tmp_path}/recycled.db"
    proc = _cli("workers", "-n", "1", "--recycle", "1", "--space", str(space), "--storage", url, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = _load("recycled", url).trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # host:pid, one process per trial
    assert proc.stdout.count("done: 1 trial(s)") == 2
    assert sum(line.startswith("data: ") for line in proc.stdout.splitlines()) == 1  # said once, by the launcher
    # the launcher delivers once its workers are done, from the fold models they kept
    assert proc.stdout.count("delivered: ") == 1 and (study_dir("recycled") / "delivered" / "model.keras").is_file()


# --------------------------------------------------------------------- refusals, recovery, interrupt, copy


def test_several_workers_on_sqlite_are_refused(tmp_path):
    space = write(tmp_path / "s.yaml", SPACE.format(name="lite", n_trials=2))
    db = tmp_path / "lite.db"
    proc = _cli("workers", "-n", "2", "--space", str(space), "--storage", f"sqlite:///{db}")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]  # (TensorFlow's start-up lines come before it)
    assert line.startswith("error: 2 workers cannot share the SQLite store") and "Traceback" not in proc.stderr
    assert f"journal:///{tmp_path}/lite.log" in line and "postgresql://" in line
    assert not db.exists()  # refused before anything was created


def _dead_pid():
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, started


def test_recover_fails_dead_workers_trials_and_requeues_them_once(tmp_path):
    """On the journal: a RUNNING trial whose process on this host is gone is stale at once, one silent for
    longer than the grace period too; a live worker's trial is left alone. `recover` re-queues each once."""
    import warnings

    from search.study.storage import HEARTBEAT_ATTR, HOST, Heartbeat, open_storage

    url = f"journal:///{tmp_path}/j.log"
    storage = open_storage(url, heartbeat=Heartbeat(1, 60))
    study = optuna.create_study(study_name="r", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trials = [study.ask() for _ in range(3)]
    for i, t in enumerate(trials):
        t.suggest_float("x", 0, 1)
        t.set_user_attr("curve", [i])
    dead_pid, dead_started = _dead_pid()

    def beat(trial, **fields):
        start = storage.get_trial(trial._trial_id).datetime_start.timestamp()
        storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR,
                                      {"host": HOST, "pid": os.getpid(), "pid_started": 0, "start": start,
                                       "time": time.time(), **fields})

    beat(trials[0], pid=dead_pid, pid_started=dead_started)  # its process is gone
    storage.record_heartbeat(trials[1]._trial_id)  # this process: alive
    beat(trials[2], host="elsewhere", time=time.time() - 600)  # silent for 10 minutes
    proc = _cli("recover", "--study", "r", "--storage", url, "--grace-period", "60", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "recovered trial 0" in proc.stdout and "recovered trial 2" in proc.stdout, proc.stdout
    after = _load("r", url).trials
    assert [t.state for t in after[:3]] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    retries = {t.system_attrs["failed_trial"]: t for t in after[3:]}
    assert sorted(retries) == [0, 2] and all(t.state == TrialState.WAITING for t in retries.values())
    assert retries[0].params == after[0].params and retries[2].params == after[2].params
    # A retry carries its predecessor's heartbeat (dead pid): once a worker takes it, that must not make
    # it look dead before the worker's own first beat.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        taken = study.ask()
    assert taken.number == retries[0].number
    proc = _cli("recover", "--study", "r", "--storage", url, timeout=120)
    assert "no stale trials; 2 running" in proc.stdout, proc.stdout
    assert len(_load("r", url).trials) == 5  # nothing failed or queued twice


def test_an_interrupted_trial_goes_back_into_the_queue(tmp_path):
    from search.study.storage import Heartbeat, open_storage
    from search.study.workers import queue_trials, work

    storage = open_storage(f"journal:///{tmp_path}/i.log", heartbeat=Heartbeat(1, 5), queue_only=True)
    study = optuna.create_study(study_name="i", storage=storage)
    queue_trials(study, 2)

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM through search.cli

    with pytest.raises(KeyboardInterrupt):
        work(study, objective, Heartbeat(1, 5), log=lambda line: None)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    assert trials[2].system_attrs["failed_trial"] == 0 and trials[2].params == trials[0].params


@pytest.mark.slow
def test_copy_study_from_sqlite_to_postgres(postgres, tmp_path):
    from search.study.storage import open_storage

    source = f"sqlite:///{tmp_path}/old.db"
    study = optuna.create_study(study_name="old", storage=open_storage(source), direction="maximize")
    study.set_user_attr("space", {"params": {"x": 1}})
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(params={"lr": 10.0 ** -i},
                                                  distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True)},
                                                  value=0.5 + i / 10, user_attrs={"val_accuracy": 0.5 + i / 10}))
    proc = _cli("copy-study", "--from", source, "--to", postgres, "--study", "old", timeout=120)
    assert proc.returncode == 0, proc.stderr
    copied = _load("old", postgres)
    assert [(t.params, t.value, t.user_attrs) for t in copied.trials] == \
           [(t.params, t.value, t.user_attrs) for t in study.trials]
    assert copied.user_attrs["space"] == {"params": {"x": 1}} and copied.direction == study.direction

    again = _cli("copy-study", "--from", source, "--to", postgres, "--study", "old", timeout=120)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: study 'old' already exists in {postgres}; nothing copied (pick --to-study NAME)"]
    missing = _cli("copy-study", "--from", source, "--to", postgres, "--study", "nope", timeout=120)
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr and "studies there: old" in missing.stderr
    assert len(_load("old", postgres).trials) == 3


@pytest.mark.parametrize("url, message", [
    ("journal:", "a journal URL is journal:///relative/path.log or journal:////abs/path.log"),
    ("journal:////", "Is a directory"),
    ("postgresql://me:secret@127.0.0.1:1/db", "cannot open storage 'postgresql://me:***@127.0.0.1:1/db': "),
])
def test_bad_storage_urls_are_one_line_errors(url, message):
    from search.errors import UserError
    from search.study.storage import open_storage

    with pytest.raises(UserError) as info:
        open_storage(url)
    assert message in str(info.value) and "\n" not in str(info.value) and "secret" not in str(info.value)
