"""`python -m search rank`: LogME ranking of a space's backbones on its training split, before fine-tuning."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--space", default="spaces/default.yaml", help="space YAML (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set dataset=/data/flowers --set weights=/data/weights")


def run(args) -> int:
    import csv

    from search.config import study_dir
    from search.space import load_space
    from search.training.rank import markdown, rank_space

    space = load_space(args.space, args.set)
    rows = rank_space(space)
    table = markdown(rows)
    print(table)
    folder = study_dir(space.study.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rank.md").write_text(table + "\n")
    with open(folder / "rank.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "backbone", "alpha", "image_size", "logme", "seconds", "params"])
        writer.writerows([r.rank, r.backbone, r.alpha, r.image_size, r.logme, r.seconds, r.params] for r in rows)
    print(f"written: {folder / 'rank.md'}, {folder / 'rank.csv'}")
    return 0
