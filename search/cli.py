"""Command line: `python -m search <command> ...` (the Makefile targets call these).

Each command is a module with `add_arguments(parser)` and `run(args) -> int`; COMMANDS lists them.
A UserError anywhere becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not errors

from search.errors import UserError  # noqa: E402

# command name -> (module with add_arguments/run, help)
COMMANDS = {
    "study": ("search.commands.study", "run (or resume) a study from a space file"),
    "dashboard": ("search.commands.dashboard", "optuna-dashboard on a study, with its per-trial artifacts"),
    "report-html": ("search.commands.report_html", "a standalone HTML report of a study's plots"),
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
    args = _parser().parse_args(argv)
    try:
        quiet_tensorflow()
        return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are stored; run the same command again to resume", file=sys.stderr)
        return 130
