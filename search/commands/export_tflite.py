"""`python -m search export-tflite`: a retrained model as float32 and int8 TensorFlow Lite files, checked
against the Keras model on the test split and timed at batch 1."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="the exported config that was retrained, e.g. studies/<study>/best.yaml")
    parser.add_argument("--run", help="run folder name, e.g. run-2 (default: the newest run of this config)")
    parser.add_argument("--seed", type=int, help="which seed's model of the run (default: its first)")
    parser.add_argument("--runs", type=int, default=200, help="timed images per model at batch 1 (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per model first (default 10)")


def run(args) -> int:
    from search.deliver.tflite import export_tflite, table

    folder, report = export_tflite(args.config, args.run, args.seed, args.runs, args.warmup)
    print(table(report))
    print(f"wrote {folder / 'model_float.tflite'}, {folder / 'model_int8.tflite'}, {folder / 'report.md'}")
    return 0
