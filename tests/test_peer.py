"""bench-peer end to end in miniature: KerasTuner Hyperband and this project on the built-in data, tiny_cnn,
a few seconds each. The timing is the benchmark's business (make bench-peer), not this test's: here, that every
run reports, that the report says when each reached the peer's best, and that the winners are retrained."""

import json

import pytest

pytest.importorskip("keras_tuner")

from search.bench import peer  # noqa: E402

TINY = ["backbone=tiny_cnn", "image_size=32", "unfreeze_layers={choices: [4, 8]}", "warmup_epochs=1",
        "finetune_epochs=2"]


@pytest.mark.slow
def test_bench_peer_in_miniature(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "MAX_EPOCHS", 3)
    report = peer.bench("builtin:shapes", "builtin", budget_s=8, seeds=1, name="peer-mini", overrides=TINY,
                        peer_kwargs={"backbone": "tiny_cnn", "alpha": 1.0, "image_size": 32, "unfreeze": (0, 4, 8)},
                        log=lambda _: None)
    rows = json.loads(report.with_suffix(".json").read_text())
    assert [r["label"] for r in rows] == ["KerasTuner Hyperband", "this project", "this project, feature cache off"]
    for r in rows:
        assert r["trials"] >= 1 and 0 <= r["best_value"] <= 1
        assert [v for _, v in r["curve"]] == sorted(v for _, v in r["curve"])  # best so far never falls
    assert rows[0]["first_reaching_target"] is not None  # the peer reaches its own best
    assert 0 <= rows[0]["best_last_epoch"] <= rows[0]["best_value"] + 1e-9  # its score is its trials' best epoch
    for r in rows[1:]:  # this project's profile: every phase, the rest, and a wall as long as the trials
        profile = r["profile"]
        assert {"build", "features", "warmup", "finetune", "evaluate", "rest of each trial"} <= set(profile)
        assert profile["wall"] > 0 and profile["finetune"] > 0 and profile["between trials"] >= -0.01
    for r in rows[:2]:
        assert r["retrained"]["seeds"] == 1 and 0 <= r["retrained"]["test_mean"] <= 1
        assert r["retrained"]["gap"] == pytest.approx(r["best_value"] - r["retrained"]["val_mean"])
    text = report.read_text()
    assert "| KerasTuner Hyperband |" in text and report.with_suffix(".png").stat().st_size > 0
    assert "| finetune |" in text  # the profile table


def test_time_to_target_and_retrain_gap_on_a_hand_made_run():
    run = peer.Run("x", curve=[(10.0, 0.70), (25.0, 0.84), (40.0, 0.88), (90.0, 0.90)])
    assert run.first_reaching(0.88) == 40.0 and run.first_reaching(0.84) == 25.0
    assert run.first_reaching(0.91) is None
    got = peer._retrained(0.90, vals=[0.86, 0.88], tests=[0.85, 0.87])
    assert got["gap"] == pytest.approx(0.03) and got["val_mean"] == pytest.approx(0.87)
    assert got["test_mean"] == pytest.approx(0.86) and got["seeds"] == 2


def test_the_study_profile_sums_phases_and_splits_off_bookkeeping():
    import datetime

    from optuna.trial import TrialState, create_trial

    t0 = datetime.datetime(2026, 1, 1)
    trials = []
    for start, length, phases in ((0, 10, {"build": 1, "warmup": 2, "finetune": 5}),
                                  (12, 6, {"build": 1, "warmup": 4})):
        t = create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={"seconds_by_phase": phases})
        t.datetime_start = t0 + datetime.timedelta(seconds=start)
        t.datetime_complete = t.datetime_start + datetime.timedelta(seconds=length)
        trials.append(t)
    profile = peer.study_profile(trials)
    assert profile["build"] == 2 and profile["warmup"] == 6 and profile["finetune"] == 5 and profile["features"] == 0
    assert profile["rest of each trial"] == pytest.approx(16 - 13)  # trials lasted 16 s, phases took 13
    assert profile["between trials"] == pytest.approx(18 - 16) and profile["wall"] == pytest.approx(18)
