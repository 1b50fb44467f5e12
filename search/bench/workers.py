"""Study throughput with 1 and N workers on this machine, side by side, the same trials in every run.

    .venv/bin/python -m search.bench.workers [--space spaces/default.yaml] [--trials 12] [--workers 2]

K parameter sets are drawn once from the space (random sampler, study seed); each run is a fresh study on
a journal file whose queue is exactly those K trials (`enqueue:`), with the pruner off, so every run does
the same work. Runs: 1 worker with every core; N workers with cores // N threads each (what `workers`
does); N workers with every core each (no split, for comparison). Each runs `python -m search workers`
as a user would. Reported: wall time of the command (start-up included) and trials/minute over the
trials themselves (first trial start to last trial end). Table in studies/bench/workers.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from search.config import studies_dir
from search.space import load_space, sample
from search.study.storage import open_storage


def draw_params(space, k: int) -> list[dict]:
    """K parameter sets of the space, as `enqueue:` entries (only the sampled params)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.study.seed))
    drawn = []
    for _ in range(k):
        trial = study.ask()
        sample(trial, space)
        drawn.append(dict(trial.params))
        study.tell(trial, 0.0)
    return drawn


def run(raw: dict, params: list[dict], workers: int, threads: int, folder: Path) -> dict:
    name = f"bench_w{workers}_t{threads}"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**raw, "study": {**(raw.get("study") or {}), "name": name, "n_trials": len(params), "timeout": None,
                             "pruner": {"type": "none"}, "sampler": {"type": "random"}, "storage": None},
            "enqueue": params}
    space_file = folder / f"{name}.yaml"
    space_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    url = f"journal:///{folder / name}.log"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "search", "workers", "-n", str(workers), "--space", str(space_file),
                           "--storage", url, "--threads", str(threads)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"error: the {workers}-worker run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    done = [t for t in trials if t.state.is_finished()]
    window = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return {"workers": workers, "threads": threads, "trials": len(done), "wall_s": wall,
            "trials_s": window.total_seconds(), "per_min": 60 * len(done) / window.total_seconds(),
            "per_min_wall": 60 * len(done) / wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.bench.workers", description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="spaces/default.yaml")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds, in alternating order (A B C, C B A, ...) so a load change hits all alike")
    parser.add_argument("--out", default=None, help="Markdown table (default: studies/bench/workers.md)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from search.study.run import prepare

    space = load_space(args.space)
    prepare(space)  # tiny_cnn's pretraining, if not cached yet, must not count against the first run
    raw = yaml.safe_load(Path(args.space).read_text())
    params = draw_params(space, args.trials)
    cores = len(os.sched_getaffinity(0))
    n = args.workers
    plans = [(1, cores), (n, max(1, cores // n)), (n, cores)]
    results = {plan: [] for plan in plans}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for round_ in range(args.repeats):
            for workers, threads in (plans if round_ % 2 == 0 else plans[::-1]):
                print(f"round {round_ + 1}: {args.trials} trials, {workers} worker(s) x {threads} thread(s) ...",
                      flush=True)
                results[(workers, threads)].append(run(raw, params, workers, threads, Path(tmp) / str(round_)))
                load.append(os.getloadavg()[0])

    def mean(plan, key):
        return sum(r[key] for r in results[plan]) / len(results[plan])

    base = mean(plans[0], "per_min")
    lines = [f"{args.trials} trials of `{args.space}` (pruner off, the same parameter sets in every run), "
             f"{cores} CPU cores, journal storage, `python -m search workers`, {args.repeats} round(s); "
             f"1-minute load average during the runs {min(load):.1f} to {max(load):.1f}:", "",
             "| workers x threads | wall time (s) | trial time (s) | trials/min (trials) | trials/min (wall) | vs 1 worker |",
             "|---|---:|---:|---:|---:|---:|"]
    for plan in plans:
        each = " / ".join(f"{r['per_min']:.1f}" for r in results[plan])
        lines.append(f"| {plan[0]} x {plan[1]} | {mean(plan, 'wall_s'):.0f} | {mean(plan, 'trials_s'):.0f} | "
                     f"{mean(plan, 'per_min'):.1f}" + (f" ({each})" if args.repeats > 1 else "") +
                     f" | {mean(plan, 'per_min_wall'):.1f} | {mean(plan, 'per_min') / base:.2f}x |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else studies_dir() / "bench" / "workers.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
