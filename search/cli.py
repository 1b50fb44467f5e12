"""Command line: `python -m search <command> ...` (the Makefile targets call these).

Each command is a module with `add_arguments(parser)` and `run(args) -> int`; COMMANDS lists them.
A UserError anywhere becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not errors

from search import signals  # noqa: E402
from search.errors import UserError  # noqa: E402

# command name -> (module with add_arguments/run, help)
COMMANDS = {
    "study": ("search.commands.study", "run (or resume) a study from a space file"),
    "bench": ("search.commands.bench", "benchmark: plain vs feature-cached training, or memory per trial"),
    "dashboard": ("search.commands.dashboard", "optuna-dashboard on a study, with its per-trial artifacts"),
    "report-html": ("search.commands.report_html", "a standalone HTML report of a study's plots"),
    "export": ("search.commands.export", "write a study's best config (best.yaml) and trials.csv"),
    "deliver": ("search.commands.deliver", "rebuild a study's delivered model (an ensemble of its kept fold models)"),
    "retrain": ("search.commands.retrain", "retrain an exported config, test it once, write a report"),
    "export-tflite": ("search.commands.export_tflite", "a retrained model as float and int8 TFLite, checked and timed"),
    "report": ("search.commands.report", "per backbone x freezing strategy table of a study"),
    "workers": ("search.commands.workers", "N worker processes on one study, an exact total of trials"),
    "worker": ("search.commands.worker", "one worker on a shared study (e.g. on another machine)"),
    "recover": ("search.commands.recover", "fail dead workers' running trials and queue them again"),
    "copy-study": ("search.commands.copy_study", "copy a study to another storage (SQLite to PostgreSQL)"),
    "rank": ("search.commands.rank", "rank a space's backbones by LogME before any fine-tuning"),
    "rank-check": ("search.commands.rank_check", "how well a study's LogME ranking agreed with its accuracies (Kendall's tau)"),
    "bench-flowers": ("search.commands.bench_flowers", "search + export + retrain + the seeds' baselines on real photos"),
    "bench-cv": ("search.commands.bench_cv", "one validation split against cross-validated trials: winners retrained and tested"),
    "bench-suite": ("search.commands.bench_suite", "benchmark: the default study against the best hand recipe, data sets x seeds"),
    "bench-peer": ("search.commands.bench_peer", "benchmark: time to quality against KerasTuner Hyperband"),
    "bench-knob": ("search.commands.bench_knob", "benchmark: one knob's values on fixed configurations and seeds"),
    "bench-portfolio": ("search.commands.bench_portfolio", "benchmark: the portfolio across data sets, warm vs cold"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text))
    return parser


def quiet_tensorflow() -> None:
    """Keep the terminal to one line per trial: no retracing warnings or absl noise."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # a command's budget counts from here: TensorFlow's import is inside it
    args = _parser().parse_args(argv)
    args.started = started
    signals.install()
    try:
        quiet_tensorflow()
        return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder: the machine's state, not a bug of ours
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are stored, the running one is queued again; run the same command "
              "again to resume", file=sys.stderr)
        return signals.exit_code()
