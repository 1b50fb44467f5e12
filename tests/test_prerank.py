"""study.rank (LogME ranking when a study is created: top_k, enqueue) and the rank-check command."""

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from search.errors import UserError
from search.space import parse_space, sample
from search.study import prerank
from search.training.rank import Ranked

CHOICES = ["tiny_cnn", "mobilenet_v2@0.35", "mobilenet@0.25"]


def _space(name, storage, rank, enqueue=(), choices=CHOICES, **study):
    return parse_space({
        "study": {"name": name, "storage": storage, "n_trials": 2, "seed": 0, "sampler": {"type": "random"},
                  "pruner": {"type": "none"}, "rank": rank, "validation": {"folds": 1}, "screen": False,
                  **study},
        "params": {"dataset": "builtin:shapes", "image_size": 32, "weights": "none", "warmup_epochs": 1,
                   "finetune_epochs": 1, "freeze": "frozen", "backbone": {"choices": list(choices)},
                   "dropout": {"low": 0.0, "high": 0.5}},
        "enqueue": list(enqueue)})


def _fake_ranking(scores: dict):
    """rank_space stand-in: {choice: LogME}, best first, without building a model."""
    calls = []

    def rank(space):
        calls.append(space.study.name)
        rows = [Ranked(*((c.split("@")[0], float(c.split("@")[1])) if "@" in c else (c, 1.0)), 32, s, 0.1, 1000)
                for c, s in scores.items()]
        rows.sort(key=lambda r: -r.logme)
        for i, r in enumerate(rows, start=1):
            r.rank = i
        return rows

    rank.calls = calls
    return rank


def _never(space):
    raise AssertionError("ranked again on resume")


# ------------------------------------------------------------------------------------------ the option


@pytest.mark.parametrize("rank, key", [
    ({"top": 1}, "study.rank.top: unknown option; valid: top_k, enqueue"),
    ({"top_k": 0}, "study.rank.top_k: expected a positive int, got 0"),
    ({"enqueue": "2"}, "study.rank.enqueue: expected a positive int, got '2'"),
    ({"top_k": True}, "study.rank.top_k: expected a positive int, got True"),
    ({"top_k": 1, "enqueue": 2}, "study.rank.enqueue: 2 exceeds top_k 1"),
    ([1], "study.rank: expected dict, got [1]"),
])
def test_bad_rank_option_is_one_line(rank, key):
    with pytest.raises(UserError) as err:
        _space("x", None, rank)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_rank_needs_a_sampled_backbone():
    with pytest.raises(UserError, match=r"study.rank: needs params.backbone with choices .*fixed to 'tiny_cnn'"):
        parse_space({"study": {"rank": {"top_k": 1}}, "params": {"backbone": "tiny_cnn"}})
    assert parse_space({"study": {"rank": {}}, "params": {"backbone": {"choices": CHOICES}}}).study.rank == {}
    assert parse_space({"params": {}}).study.rank is None


# ------------------------------------------------------------------- a new study, resume, workers


def test_top_k_and_enqueue_on_a_worker_study(tmp_path, monkeypatch, capsys):
    """The `make workers` path (journal file, queue-only storage): the launcher creates and ranks, a worker
    opening the study later samples only the kept choices and never ranks again."""
    from search.commands.worker import open_worker_study
    from search.study.storage import Heartbeat

    rank = _fake_ranking({"mobilenet@0.25": 2.0, "tiny_cnn": 1.5, "mobilenet_v2@0.35": -1.0})
    monkeypatch.setattr(prerank, "rank_space", rank)
    storage = f"journal:///{tmp_path}/w.log"
    baselines = [{"backbone": "mobilenet_v2@0.35", "dropout": 0.1}, {"dropout": 0.2},
                 {"backbone": "tiny_cnn", "dropout": 0.3}]
    space = _space("w", storage, {"top_k": 2, "enqueue": 2}, enqueue=baselines)
    study = open_worker_study(space, Heartbeat(), None)  # the launcher: creates the study
    assert rank.calls == ["w"]
    out = capsys.readouterr().out
    assert "1 mobilenet@0.25" in out and "LogME   2.0000" in out
    lines = {c: next(line for line in out.splitlines() if f" {c} " in line) for c in CHOICES}
    assert lines["mobilenet@0.25"].endswith("kept, enqueued")
    assert lines["tiny_cnn"].endswith("kept, enqueued")
    assert lines["mobilenet_v2@0.35"].endswith("dropped")
    assert "not queued: backbone mobilenet_v2@0.35 was dropped" in out

    attrs = study.user_attrs
    assert [(r["choice"], r["rank"]) for r in attrs["ranking"]] == [
        ("mobilenet@0.25", 1), ("tiny_cnn", 2), ("mobilenet_v2@0.35", 3)]
    assert attrs["rank_kept"] == ["tiny_cnn", "mobilenet@0.25"]  # the space's order
    assert attrs["rank_enqueued"] == ["mobilenet@0.25", "tiny_cnn"]
    assert attrs["rank_skipped_baselines"] == [baselines[0]]
    assert attrs["space"] == space.raw  # the ORIGINAL space is what a resume is compared with
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"backbone": "mobilenet@0.25"}, {"backbone": "tiny_cnn"}, baselines[1], baselines[2]]
    note = prerank.note_section(study)
    assert "### LogME ranking" in note and "| 3 | mobilenet_v2 | 0.35 | 32 px | -1.0000 |" in note

    # a worker: a resume, so no ranking; the restriction comes from the study, not from this space
    monkeypatch.setattr(prerank, "rank_space", _never)
    worker = open_worker_study(space, Heartbeat(), 0)
    restricted = prerank.restricted(space, worker)
    assert restricted.params["backbone"].choices == ("tiny_cnn", "mobilenet@0.25")
    assert space.params["backbone"].choices == tuple(CHOICES)  # the original is untouched
    assert restricted.raw == space.raw
    assert len(worker.get_trials(states=(TrialState.WAITING,))) == 4  # nothing queued twice
    without = dataclasses.replace(space, study=dataclasses.replace(space.study, rank=None))
    later = open_worker_study(without, Heartbeat(), 1)  # the option gone: the study still applies its own
    assert prerank.restricted(without, later).params["backbone"].choices == ("tiny_cnn", "mobilenet@0.25")

    # trials: the queue first (best-ranked first), then the sampler, only ever among the kept choices
    seen = []
    for _ in range(12):
        trial = study.ask() if len(seen) < 4 else optuna.create_study(sampler=optuna.samplers.RandomSampler(len(seen))).ask()
        seen.append(sample(trial, restricted).backbone)
    assert seen[:2] == ["mobilenet", "tiny_cnn"] and seen[3] == "tiny_cnn"  # seen[2]: a baseline without backbone
    assert set(seen) <= {"tiny_cnn", "mobilenet"}


def test_rank_on_an_existing_study_is_ignored_and_said(tmp_path, monkeypatch, capsys):
    from search.study.run import open_study

    storage = f"sqlite:///{tmp_path}/old.db"
    old = _space("old", storage, None)
    open_study(old)  # made without study.rank
    monkeypatch.setattr(prerank, "rank_space", _never)
    with_rank = _space("old", storage, {"top_k": 1})
    study = open_study(with_rank)
    assert prerank.restricted(with_rank, study).params["backbone"].choices == tuple(CHOICES)
    assert "study.rank is ignored: the study existed before it was set" in capsys.readouterr().out
    assert "ranking" not in study.user_attrs and prerank.note_section(study) == ""


@pytest.mark.slow
def test_real_ranking_top_1_runs_only_the_best_backbone_and_resumes(tmp_path, monkeypatch):
    """A real study: LogME on the built-in data, 2 tiny trials, then a resume that does not rank again."""
    from optuna_dashboard import get_note

    from search.study.run import run_study

    space = _space("real", f"sqlite:///{tmp_path}/real.db", {"top_k": 1, "enqueue": 1},
                   choices=["tiny_cnn", "mobilenet_v2@0.35"])
    study = run_study(space, reporters=())
    ranking = study.user_attrs["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2] and ranking[0]["logme"] >= ranking[1]["logme"]
    best = ranking[0]["choice"]
    assert study.user_attrs["rank_kept"] == [best] and study.user_attrs["rank_enqueued"] == [best]
    assert study.trials[0].system_attrs["fixed_params"] == {"backbone": best}
    assert "### LogME ranking" in get_note(study)

    monkeypatch.setattr(prerank, "rank_space", _never)
    study = run_study(space, n_trials=1, reporters=())
    assert len(study.trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.params["backbone"] for t in study.trials} == {best}
    assert {t.user_attrs["config"]["backbone"] for t in study.trials} == {best.split("@")[0]}


# ---------------------------------------------------------------------------------------- rank-check


def _config(backbone, alpha=1.0, size=32, weights="none"):
    from search.config import TrialConfig

    return {**TrialConfig().to_dict(), "backbone": backbone, "alpha": alpha, "image_size": size, "weights": weights}


def _hand_study(storage, name="hand", directions=("maximize",)):
    """Three groups, no training: tiny_cnn best, then mobilenet_v2 0.35, then mobilenet 0.25 (two sizes)."""
    study = optuna.create_study(study_name=name, storage=storage, directions=list(directions))
    dist = {"dropout": optuna.distributions.FloatDistribution(0, 1)}
    trials = [(_config("tiny_cnn"), 0.9), (_config("tiny_cnn"), 0.7), (_config("tiny_cnn"), 0.5),
              (_config("tiny_cnn"), 0.1),
              (_config("mobilenet_v2", 0.35), 0.6), (_config("mobilenet_v2", 0.35), 0.55),
              (_config("mobilenet", 0.25, 48), 0.4)]
    for config, accuracy in trials:
        values = [accuracy] + [1.0] * (len(directions) - 1)
        study.add_trial(optuna.trial.create_trial(values=values, params={"dropout": 0.1}, distributions=dist,
                                                  user_attrs={"config": config}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"dropout": 0.1},
                                              distributions=dist, user_attrs={"config": _config("resnet50")}))
    return study


LOGME = {"tiny_cnn": 3.0, "mobilenet_v2": 2.0, "mobilenet": 1.0}


def test_rank_check_exact_tau_and_table(tmp_path, monkeypatch, capsys):
    from search.cli import main

    storage = f"sqlite:///{tmp_path}/hand.db"
    _hand_study(storage)
    computed = []
    monkeypatch.setattr(prerank, "compute_logme", lambda c: computed.append(c["backbone"]) or LOGME[c["backbone"]])
    assert main(["rank-check", "--study", "hand", "--storage", storage]) == 0
    assert sorted(computed) == ["mobilenet", "mobilenet_v2", "tiny_cnn"]  # once per group; pruned trials ignored
    from search.config import studies_dir

    table = (studies_dir() / "hand" / "rank_check.md").read_text()
    assert table in capsys.readouterr().out
    assert "| tiny_cnn, 32 px | 3.0000 * | 1 | 4 | 0.9000 | 1 | 0.7000 |" in table
    assert "| mobilenet_v2@0.35, 32 px | 2.0000 * | 2 | 2 | 0.6000 | 2 | 0.5750 |" in table
    assert "| mobilenet@0.25, 48 px | 1.0000 * | 3 | 1 | 0.4000 | 3 | 0.4000 |" in table
    assert "over 3 groups: **1.000**" in table


def test_rank_check_uses_the_stored_ranking_and_multi_objective_values(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/multi.db"
    study = _hand_study(storage, "multi", directions=("maximize", "minimize"))
    # stored: the reverse order for two groups (and a ranked choice never tried); the third is computed
    study.set_user_attr("ranking", [
        {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 32, "weights": "none", "logme": 5.0,
         "rank": 1, "choice": "mobilenet_v2@0.35"},
        {"backbone": "tiny_cnn", "alpha": 1.0, "image_size": 32, "weights": "none", "logme": 4.0, "rank": 2,
         "choice": "tiny_cnn"},
        {"backbone": "resnet50", "alpha": 1.0, "image_size": 32, "weights": "none", "logme": 0.5, "rank": 3,
         "choice": "resnet50"}])
    monkeypatch.setattr(prerank, "compute_logme", lambda c: LOGME[c["backbone"]])
    result = prerank.check_agreement(study)
    assert [(g.label(False), g.source, g.best) for g in result.groups] == [
        ("mobilenet_v2@0.35, 32 px", "stored", 0.6), ("tiny_cnn, 32 px", "stored", 0.9),
        ("mobilenet@0.25, 48 px", "computed", 0.4)]
    # pairs: (v2, tiny) disagree, (v2, v1) agree, (tiny, v1) agree: (2 - 1) / 3
    assert result.tau == pytest.approx(1 / 3) and -1 <= result.tau_top3 <= 1
    assert result.not_tried == ["resnet50"]
    assert "never completed" in prerank.agreement_markdown(result)
    assert prerank.check_agreement(study, recompute=True).tau == pytest.approx(1.0)


def test_rank_check_errors_are_one_line(tmp_path, capsys):
    from search.cli import main

    storage = f"sqlite:///{tmp_path}/one.db"
    study = optuna.create_study(study_name="one", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"config": _config("tiny_cnn")}))
    assert main(["rank-check", "--study", "one", "--storage", storage]) == 2
    assert main(["rank-check", "--study", "nope", "--storage", storage]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: study 'one' has 1 group(s) of completed trials by (backbone, alpha, image size); "
                   "rank-check needs at least 2",
                   f"error: no study 'nope' in {storage}; studies there: one"]


def test_compute_logme_is_real():
    score = prerank.compute_logme(_config("tiny_cnn"))
    assert isinstance(score, float) and score == score
