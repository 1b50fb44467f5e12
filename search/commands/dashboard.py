"""`python -m search dashboard`: optuna-dashboard on a study, its per-trial artifacts wired in."""

from __future__ import annotations

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--study", default="default", help="study name (default: %(default)s)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/<study>.db)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s; 0 picks a free one)")


def run(args) -> int:
    from search.report.dashboard import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    try:
        serve(args.study, args.storage, args.host, args.port)
    except KeyboardInterrupt:
        print("dashboard stopped")
    return 0
