"""`python -m search bench-knob`: one knob's values on fixed configurations, same split and seeds."""

from __future__ import annotations

from search.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--space", required=True, help="space file: its fixed params complete each configuration")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a space param")
    parser.add_argument("--knob", required=True, help="the TrialConfig field to vary, e.g. lr_schedule")
    parser.add_argument("--values", nargs="+", required=True, help="its values, the first being the reference")
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="a configuration, e.g. '{freeze: frozen, learning_rate: 0.001}' (repeatable); "
                             "default: the space's enqueue list")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration and value (default %(default)s)")


def run(args) -> int:
    from search.bench.knob import run as bench
    from search.device import configure_devices

    if args.seeds < 1 or len(args.values) < 2:
        raise UserError("--seeds must be at least 1 and --values needs at least two values")
    print(f"device: {configure_devices()}", flush=True)
    report = bench(args.space, args.set, args.knob, args.values, args.seeds, args.config)
    print(report.read_text())
    print(f"report: {report}")
    return 0
