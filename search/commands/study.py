"""`python -m search study`: run or resume a study from a space file."""

from __future__ import annotations

from search.errors import UserError

DEFAULT_SPACE = "spaces/default.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--space", default=DEFAULT_SPACE, help="space YAML (default: %(default)s)")
    parser.add_argument("--name", help="study name (overrides study.name)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/<name>.db)")
    parser.add_argument("--n-trials", type=int, help="trials to add in this run (overrides study.n_trials)")
    parser.add_argument("--timeout", type=float, help="seconds budget for this run (overrides study.timeout)")
    parser.add_argument("--warm-start", action="append", default=[], metavar="STUDY",
                        help="a new study queues the best configs of this earlier study (name or storage URL) first; "
                             "repeatable; also `all` or `portfolio` (study.warm_start in the space)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param or study.<key> of the space, e.g. --set dataset=/data/flowers "
                             "--set 'image_size={choices: [96, 128]}' (validated like the file)")


def run(args) -> int:
    from search.device import configure_devices
    from search.space import load_space
    from search.study.plan import delivers
    from search.study.run import run_study

    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive seconds, got {args.timeout}")
    space = load_space(args.space, args.set).with_study(name=args.name, storage=args.storage)
    if args.warm_start:  # replaces the file's study.warm_start.from; its top_k (default 3) stays
        sources = args.warm_start[0] if args.warm_start in (["all"], ["portfolio"]) else args.warm_start
        space = space.with_study(warm_start={"from": sources, "top_k": (space.study.warm_start or {}).get("top_k", 3)})
    print(f"device: {configure_devices()}", flush=True)
    run_study(space, n_trials=args.n_trials, timeout=args.timeout, started=args.started)
    if delivers(space):
        from search.deliver.ensemble import deliver

        timeout = args.timeout or space.study.timeout
        deliver(space.study.name, deadline=args.started + timeout if timeout else None)
    return 0
