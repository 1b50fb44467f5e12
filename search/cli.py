"""Command line: `python -m search <command> ...` (the Makefile targets call these)."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not errors

from search.errors import UserError  # noqa: E402

DEFAULT_SPACE = "spaces/default.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    study = commands.add_parser("study", help="run (or resume) a study from a space file")
    study.add_argument("--space", default=DEFAULT_SPACE, help="space YAML (default: %(default)s)")
    study.add_argument("--name", help="study name (overrides study.name)")
    study.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/<name>.db)")
    study.add_argument("--n-trials", type=int, help="trials to add in this run (overrides study.n_trials)")
    study.add_argument("--timeout", type=float, help="seconds budget for this run (overrides study.timeout)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "study":
            return _study(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are stored; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _study(args) -> int:
    from search.device import configure_devices
    from search.space import load_space
    from search.study import run_study

    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    space = load_space(args.space).with_study(name=args.name, storage=args.storage)
    print(f"device: {configure_devices()}", flush=True)
    run_study(space, n_trials=args.n_trials, timeout=args.timeout)
    return 0
