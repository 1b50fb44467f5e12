"""optuna-dashboard on a live study: artifacts, notes, progress lines, SQLite under concurrent readers,
the HTML report, and a real headless browser that opens a trial and sees its artifacts."""

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna_dashboard import get_note

from search.cli import main
from search.config import TrialConfig, studies_dir
from search.data.datasets import load_search_data
from search.errors import UserError
from search.report.html import write_html_report
from search.study.artifacts import ArtifactReporter, artifact_dir
from search.study.run import _storage
from tests.conftest import pruned_pair_space, write

# Two trials: 0 trains (top block unfrozen), 1 is pruned at epoch 2, its first fine-tuning epoch (the first
# reported), so both a full curve and a pruning-epoch curve are uploaded (tests/conftest.py: pruned_pair_space).
SPACE = pruned_pair_space("dash", sound="freeze: top_blocks, unfreeze_blocks: 1")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow  # a live study, dashboard and browser (the module's fixture: about 20 s)


def _search_data():
    """The space's train and validation parts, computed here, to check what the notes and CSV say."""
    return load_search_data("builtin:shapes", 32, (0.75, 0.10, 0.15), 0)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The dashboard starts on an empty study; the study then runs in another process while the
    dashboard's API and a plain SQLite reader poll the same file as fast as they can."""
    folder = tmp_path_factory.mktemp("dash")
    url = f"sqlite:///{folder}/dash.db"
    optuna.create_study(study_name="dash", storage=_storage(url), direction="maximize")
    dash_log = folder / "dashboard.log"
    dashboard = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--study", "dash", "--storage", url,
                                  "--port", "0"], stdout=open(dash_log, "w"), stderr=subprocess.STDOUT)
    try:
        def url_printed():
            assert dashboard.poll() is None, f"the dashboard exited: {dash_log.read_text()[-2000:]}"
            return re.search(r"http://127\.0\.0\.1:\d+/dashboard/studies/(\d+)", dash_log.read_text())

        page = _wait_for(url_printed, 120, "the dashboard's URL")
        base, study_id = page.group(0).split("/dashboard/")[0], int(page.group(1))
        study_log = folder / "study.log"
        study = subprocess.Popen([sys.executable, "-m", "search", "study", "--space", str(write(folder / "dash.yaml", SPACE)),
                                  "--storage", url], stdout=open(study_log, "w"), stderr=subprocess.STDOUT)
        # a reader with optuna's default SQLite settings, as any other tool would open the file
        reader = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
        polls = SimpleNamespace(reader=0, api=0, reader_states=set(), api_states=set(), errors=[])
        deadline = time.monotonic() + 600
        while study.poll() is None:
            assert time.monotonic() < deadline, "the study did not finish in 10 minutes"
            try:
                polls.reader_states |= {t.state.name for t in reader.get_all_trials(study_id, deepcopy=False)}
                polls.reader += 1
                data = _get_json(f"{base}/api/studies/{study_id}?after=0")
                polls.api_states |= {t["state"] for t in data["trials"]}
                polls.api += 1
            except Exception as exc:  # recorded, asserted on below: a reader error is a finding too
                polls.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.1)
        yield SimpleNamespace(url=url, base=base, study_id=study_id, folder=folder, polls=polls, rc=study.returncode,
                              log=study_log.read_text(), study=optuna.load_study(study_name="dash", storage=url))
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


# ------------------------------------------------------------------------------ concurrency and SQLite


def test_study_survives_dashboard_and_reader_polling(live):
    assert live.rc == 0, live.log[-3000:]
    assert "database is locked" not in live.log
    assert [t.state.name for t in live.study.trials] == ["COMPLETE", "PRUNED"]
    assert live.polls.errors == []
    # the readers really read while trials were being written, many times
    assert "RUNNING" in live.polls.reader_states and "Running" in live.polls.api_states
    assert live.polls.reader >= 20 and live.polls.api >= 20, vars(live.polls)
    print(f"while the study ran: {live.polls.reader} reader polls, {live.polls.api} dashboard API polls, 0 errors")
    with sqlite3.connect(live.url[len("sqlite:///"):]) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _hold_read_transaction(path: Path, seconds: float, started: threading.Event) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    con.execute("SELECT count(*) FROM trials").fetchall()  # a shared lock, kept until COMMIT
    started.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def test_writer_is_not_blocked_by_a_long_read_transaction(tmp_path):
    """A reader inside a 7 s read transaction (a slow query, an open SQL shell): with optuna's default
    SQLite settings the writer fails after SQLite's 5 s; with the study's storage it does not wait at all."""
    def finish_trial(study, trial):  # what a trial writes after its start (ask retries; these do not)
        started = time.monotonic()
        trial.set_user_attr("curve", list(range(100)))
        study.tell(trial, 0.5)
        return time.monotonic() - started

    for name, make in (("default", optuna.storages.RDBStorage), ("ours", _storage)):
        path = tmp_path / f"{name}.db"
        study = optuna.create_study(study_name="s", storage=make(f"sqlite:///{path}"))
        trial = study.ask()
        started = threading.Event()
        hold = 7 if name == "default" else 3  # longer than SQLite's default 5 s busy timeout, where it matters
        holder = threading.Thread(target=_hold_read_transaction, args=(path, hold, started))
        holder.start()
        started.wait(10)
        try:
            if name == "default":
                with pytest.raises(optuna.exceptions.StorageInternalError) as info:
                    finish_trial(study, trial)
                assert "database is locked" in str(info.value.__cause__)
            else:
                assert finish_trial(study, trial) < 2
                assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
        finally:
            holder.join()


# ------------------------------------------------------------------------------------ artifacts, notes


def test_each_trial_has_its_artifacts_in_the_dashboard(live):
    data = _get_json(f"{live.base}/api/studies/{live.study_id}?after=0")
    files = {t["number"]: sorted(a["filename"] for a in t["artifacts"]) for t in data["trials"]}
    assert files[0] == ["trial_0_confusion_matrix.png", "trial_0_learning_curve.png", "trial_0_per_class_metrics.csv"]
    assert files[1] == ["trial_1_learning_curve.png"]  # pruned: its curve up to the pruning epoch, nothing else
    trial0 = next(t for t in data["trials"] if t["number"] == 0)
    by_name = {a["filename"]: a for a in trial0["artifacts"]}
    for name, magic in (("trial_0_learning_curve.png", b"\x89PNG"), ("trial_0_per_class_metrics.csv", b"class,")):
        artifact = by_name[name]
        with urllib.request.urlopen(f"{live.base}/artifacts/{live.study_id}/{trial0['trial_id']}/"
                                    f"{artifact['artifact_id']}", timeout=30) as response:
            body = response.read()
        assert body.startswith(magic), name
    rows = [r.split(",") for r in body.decode().strip().splitlines()]
    data = _search_data()
    assert [r[0] for r in rows] == ["class", *data.class_names, "macro"]
    assert [int(r[4]) for r in rows[1:]] == [*np.bincount(data.val.labels), len(data.val)]  # support per class
    # the files live where `python -m search dashboard` looks for them: beside the SQLite file
    assert len(list(artifact_dir("dash").iterdir())) == 4


def test_the_dashboard_names_the_objective(live):
    """`make study` names the objective of the study the dashboard shows: val_accuracy, not "Objective 0"."""
    assert live.study.metric_names == ["val_accuracy"]
    assert _get_json(f"{live.base}/api/studies/{live.study_id}?after=0")["objective_names"] == ["val_accuracy"]


def test_notes_say_why_a_trial_ended_and_what_the_study_is(live):
    data = _get_json(f"{live.base}/api/studies/{live.study_id}?after=0")  # what the dashboard renders
    notes = {t["number"]: t["note"]["body"] for t in data["trials"]}
    assert "pruned after epoch 2" in notes[1] and "val_accuracy" in notes[1]
    assert notes[0] == ""  # completed: its artifacts say it all
    study_note = data["note"]["body"]
    assert study_note == get_note(live.study)
    split = _search_data()
    assert f"{len(split.train)} train, {len(split.val)} validation" in study_note
    assert all(f"`{c}`" in study_note for c in split.class_names)
    assert "| learning_rate | 0.0001 … 0.01 (log) |" in study_note


def test_failed_trial_gets_a_note_with_the_reason(tmp_path):
    storage = _storage(f"sqlite:///{tmp_path}/f.db")
    study = optuna.create_study(study_name="f", storage=storage, direction="maximize")
    reporter = ArtifactReporter(tmp_path / "artifacts")
    curve = [{"epoch": 0, "phase": 1, "seconds": 1.0, "loss": 2.0, "accuracy": 0.2, "val_loss": 2.1, "val_accuracy": 0.2}]
    # a TrialError: the objective records why in the "ended" attribute
    trial = study.ask()
    trial.set_user_attr("ended", "failed: training diverged: loss is nan at epoch 1")
    reporter(trial, TrialConfig(), curve, None, ["a", "b"])
    assert "training diverged: loss is nan at epoch 1" in get_note(trial)
    assert [m.filename for m in get_all_artifact_meta(trial, storage=storage)] == ["trial_0_learning_curve.png"]
    # any other exception: the reporter reads it from the exception being propagated
    trial = study.ask()
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        reporter(trial, TrialConfig(), [], None, ["a", "b"])
    assert "RuntimeError: disk full" in get_note(trial)
    assert get_all_artifact_meta(trial, storage=storage) == []  # no epoch finished: no curve to draw


def test_artifact_dir_is_in_the_studies_folder_whatever_the_storage():
    assert artifact_dir("s") == studies_dir() / "s" / "artifacts"  # never beside a SQLite file (a data folder?)
    with pytest.raises(UserError, match="'../s' is not usable as a study name"):
        artifact_dir("../s")


# ------------------------------------------------------------------------------------ progress, report


def test_progress_lines_without_keras_noise(live):
    lines = live.log.splitlines()
    assert any(re.match(r"\[1/2\] trial +0 COMPLETE search value=0\.\d{4} best=0\.\d{4} .* \d+\.\ds$", line) for line in lines)
    assert any(re.match(r"\[2/2\] trial +1 PRUNED   search .*\(pruned after epoch 2\)$", line) for line in lines)
    assert "━" not in live.log and "/step" not in live.log  # Keras's per-batch progress bars stay off


def test_html_report_of_a_small_study_explains_what_it_skips(live, tmp_path):
    path = write_html_report(live.study, tmp_path / "sub" / "report.html")
    page = path.read_text()
    assert page.count('class="plotly-graph-div"') == 5
    assert "Parameter importances</h2>" in page
    assert "Not shown: needs at least 2 completed trials whose parameters differ (1 completed)" in page


def test_html_report_has_every_figure(tmp_path):
    study = optuna.create_study(direction="maximize")
    dists = {"backbone": optuna.distributions.CategoricalDistribution(["mobilenet_v2", "resnet50"]),
             "freeze": optuna.distributions.CategoricalDistribution(["frozen", "top_blocks"]),
             "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for i in range(8):
        params = {"backbone": ["mobilenet_v2", "resnet50"][i % 2], "freeze": ["frozen", "top_blocks"][i // 4],
                  "learning_rate": 10 ** (-4 + i / 4)}
        config = {**TrialConfig().to_dict(), **params, "unfreeze_blocks": 2}
        value = 0.5 + 0.05 * i
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=value, intermediate_values={0: value - 0.1, 1: value},
            user_attrs={"config": config, "params_total": 1000, "params_trainable": 100 * (1 + i // 4)}))
    path = write_html_report(study, tmp_path / "report.html")
    page = path.read_text()
    assert "Not shown" not in page
    assert page.count('class="plotly-graph-div"') == 6
    assert page.count("plotly.js v") == 1  # the library is embedded once: the file works offline
    assert "freeze=top_blocks" in page and "mobilenet_v2" in page


# ----------------------------------------------------------------------------------------- command line


def test_dashboard_command_rejects_bad_input_and_creates_nothing(live, tmp_path, capsys):
    missing = tmp_path / "missing.db"
    for argv, message in (
        (["dashboard", "--study", "x", "--storage", f"sqlite:///{missing}"], "no study store at"),
        (["dashboard", "--study", "nope", "--storage", live.url], "no study 'nope' in .*; studies there: dash"),
        (["dashboard", "--study", "dash", "--port", "70000"], "--port must be between 0 and 65535"),
        (["report-html", "--study", "x", "--storage", f"sqlite:///{missing}"], "no study store at"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
    assert not missing.exists()


def test_report_html_command_writes_beside_the_study(live, capsys):
    assert main(["report-html", "--study", "dash", "--storage", live.url]) == 0
    out = studies_dir() / "dash" / "report.html"
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert "<h1>Study dash</h1>" in out.read_text()


# ----------------------------------------------------------------------------------------- the browser


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (.ci/run installs Debian's chromium)")
def test_browser_opens_a_trial_and_sees_its_artifacts(live, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{live.base}/dashboard/")
            page.get_by_role("link", name=re.compile(r"\bdash\b")).click()  # the study list
            expect(page).to_have_url(re.compile(rf"/dashboard/studies/{live.study_id}$"))
            expect(page.get_by_text("val_accuracy").first).to_be_visible()  # the objective's name, in the plots
            expect(page.get_by_text("Objective 0")).to_have_count(0)
            page.get_by_role("link", name="Trials (List)").click()
            page.get_by_role("button", name=re.compile(r"^Trial 0")).click()
            for name in ("trial_0_learning_curve.png", "trial_0_confusion_matrix.png", "trial_0_per_class_metrics.csv"):
                expect(page.get_by_text(name)).to_be_visible()
            images = page.locator("img[src*='/artifacts/']")
            expect(images).to_have_count(2)
            page.get_by_role("heading", name="Artifacts").evaluate(  # to the top, without scrolling sideways
                "e => { e.scrollIntoView({block: 'start'}); for (let p = e; p; p = p.parentElement) p.scrollLeft = 0; }")
            page.wait_for_function("[...document.querySelectorAll(\"img[src*='/artifacts/']\")]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")  # the PNGs really load
            shot = tmp_path / "dashboard_trial_0.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            page.get_by_role("button", name=re.compile(r"^Trial 1")).click()  # the pruned one: curve and note
            expect(page.get_by_text("trial_1_learning_curve.png")).to_be_visible()
            expect(page.get_by_role("heading", name="Trial 1: pruned")).to_be_visible()  # its note
            expect(page.get_by_text(re.compile(r"^Why: pruned after epoch 2"))).to_be_visible()
            page.screenshot(path=str(tmp_path / "dashboard_trial_1.png"))
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}")
