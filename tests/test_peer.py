"""bench-peer end to end in miniature: KerasTuner Hyperband and this project on the built-in data, tiny_cnn,
a few seconds each. The timing is the benchmark's business (make bench-peer), not this test's: here, that every
run reports, that the report says when each reached the peer's best, and that the winners are retrained."""

import json

import pytest

pytest.importorskip("keras_tuner")

from search.bench import peer  # noqa: E402

TINY = ["backbone=tiny_cnn", "image_size=32", "unfreeze_layers={choices: [4, 8]}", "warmup_epochs=1",
        "finetune_epochs=2"]


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
    for r in rows[:2]:
        assert r["retrained"]["seeds"] == 1 and 0 <= r["retrained"]["test_mean"] <= 1
        assert r["retrained"]["gap"] == pytest.approx(r["best_value"] - r["retrained"]["val_mean"])
    text = report.read_text()
    assert "| KerasTuner Hyperband |" in text and report.with_suffix(".png").stat().st_size > 0
