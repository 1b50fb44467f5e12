"""The portfolio bench's pieces on hand-made inputs (search/bench/portfolio.py); its measurement is `make
bench-portfolio`'s business, not a test's."""

from pathlib import Path

import pytest

from search.bench import portfolio
from search.errors import UserError
from search.space import load_space, parse_space


def test_the_greedy_portfolio_adds_what_raises_the_mean_best_most():
    # candidate 0 is best on average; 1 is poor on average but the best on b; 2 is second everywhere
    table = {"a": [0.90, 0.60, 0.85], "b": [0.80, 0.95, 0.78], "c": [0.85, 0.50, 0.84]}
    assert portfolio.greedy_portfolio(table, 2) == [0, 1]
    assert portfolio.greedy_portfolio(table, 5) == [0, 1, 2]  # no more than there are
    table["a"][0] = float("nan")  # a candidate that failed on a set counts as nothing there
    assert portfolio.greedy_portfolio(table, 1) == [2]
    saturated = {"a": [1.0, 0.9, 0.95], "b": [1.0, 0.8, 0.99]}  # 0 is best everywhere: then the best mean, 2
    assert portfolio.greedy_portfolio(saturated, 3) == [0, 2, 1]


def test_data_sets_split_the_classes_and_link_images_under_studies(tmp_path, studies_home):
    data = tmp_path / "photos"
    for name in ("a", "b", "c", "d", "e"):
        (data / name).mkdir(parents=True)
        for i in range(6):
            (data / name / f"{i}.jpg").write_bytes(b"x")
    (data / "a" / "notes.txt").write_text("not an image")
    sets, held_out = portfolio.data_sets(str(data), (2, 4), held_out=3)
    assert list(sets) == ["seen 3 classes x 2", "seen 3 classes x 4", "builtin:shapes"]
    small = sets["seen 3 classes x 2"]
    assert small.startswith(str(studies_home))  # never written into the user's folder
    linked = sorted(p.relative_to(small).as_posix() for p in Path(small).rglob("*.jpg"))
    assert linked == ["a/0.jpg", "a/1.jpg", "b/0.jpg", "b/1.jpg", "c/0.jpg", "c/1.jpg"]
    held = sorted(p.parent.name for p in Path(held_out).rglob("*.jpg"))
    assert held == ["d"] * 3 + ["e"] * 3  # the held-out classes only: the portfolio never sees them
    assert sorted(p.name for p in data.iterdir()) == ["a", "b", "c", "d", "e"]  # nothing added to the user's folder
    (data / "e").rename(tmp_path / "e")
    for name in ("c", "d"):
        (data / name).rename(tmp_path / name)
    with pytest.raises(UserError, match="2 class folder"):
        portfolio.data_sets(str(data), (2, 4), held_out=3)


def test_every_candidate_is_a_valid_queued_trial_of_the_portfolio_space():
    space = load_space(portfolio.SPACE)
    parse_space({**space.raw, "enqueue": portfolio.CANDIDATES}, "candidates")  # raises on any invalid entry
    assert len({str(c) for c in portfolio.CANDIDATES}) == len(portfolio.CANDIDATES)
