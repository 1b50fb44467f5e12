"""Warm start: a new study queues the best configurations of earlier studies first (`study.warm_start`).

  study: {warm_start: {from: [<study name or storage URL>, ...] | all | portfolio, top_k: K}}   (K: 3)
  or `make study ARGS="--warm-start NAME"` (repeatable).

- A name is that study in this study's storage, else in its own default file (studies/<name>.db); a URL
  is every study in that storage; `all` is every other study in this study's storage; `portfolio` is the
  configurations of spaces/portfolio.yaml, for a user with no earlier study (zero-shot AutoML's idea).
- Only the params this space samples are transferred: a categorical value it does not offer is dropped, a
  number is clipped into its range (rounded for ints, snapped to its step); a param it fixes or lacks keeps
  the space's own value. A config left with no param, or the same as one queued before, is skipped.
- With several sources, they are ordered by how well their winner's backbone suits the new data: LogME of
  its frozen features on this study's training split (search/training/rank.py, the score `study.rank` uses),
  then by their best value; the K configs are then taken round-robin, each source's best first.
- Each queued trial records where it came from (user attr `warm_start`, shown in the trial list and the
  study note); the study records the list (study attr `warm_start`). It runs only when the study is created,
  so a resume never queues again.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna

from search.config import FIELD_TYPES, valid_study_name
from search.errors import UserError
from search.space import Space, load_space, split_backbone
from search.study.pareto import accuracy
from search.study.prerank import compute_logme
from search.study.record import TrialRecord
from search.study.storage import file_path, open_existing_study, open_storage, shown

WARM_START_ATTR = "warm_start"  # study attr: [{source, trial, value, params}] queued when the study was made
PORTFOLIO = Path(__file__).resolve().parents[2] / "spaces" / "portfolio.yaml"


def transfer(params: dict, space: Space) -> dict:
    """The part of another study's params that this space can take: sampled here, clipped into its range."""
    out = {}
    for name, value in params.items():
        param = space.params.get(name)
        if param is None or param.is_fixed:
            continue
        if param.choices is not None:
            if value in param.choices:
                out[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            continue
        value = min(max(value, param.low), param.high)
        if param.step:
            value = param.low + round((value - param.low) / param.step) * param.step
            value = min(value, param.high)
        out[name] = int(round(value)) if FIELD_TYPES[name] is int else float(value)
    return out


def candidates_from(source: optuna.Study, top_k: int) -> list[dict]:
    """A source study's K best completed trials, best first: {source, trial, value, params}."""
    done = [t for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if accuracy(t) is not None]
    done.sort(key=lambda t: (-accuracy(t), t.number))
    return [{"source": source.study_name, "trial": t.number, "value": round(accuracy(t), 5), "params": dict(t.params),
             "config": TrialRecord.of(t).config} for t in done[:top_k]]


def portfolio_candidates(path: Path | None = None) -> list[dict]:
    """The `enqueue:` list of spaces/portfolio.yaml (itself a space, so its entries are validated alike)."""
    path = path or PORTFOLIO
    if not path.is_file():
        raise UserError(f"study.warm_start.from: portfolio: {str(path)!r} not found")
    return [{"source": "portfolio", "trial": f"entry {i + 1}", "value": None, "params": dict(entry), "config": None}
            for i, entry in enumerate(load_space(path).enqueue)]


def source_studies(space: Space, sources) -> list[optuna.Study]:
    """The earlier studies `from` names (a list, or `all`), never the new study itself."""
    me, url = space.study.name, space.study.storage_url
    found = []  # (study, the URL it was read from)
    for entry in ([url] if sources == "all" else sources):
        if "://" in entry:
            path = file_path(entry)
            if path is not None and not path.is_file():
                raise UserError(f"study.warm_start.from: no study store at {str(path)!r}")
            storage = open_storage(entry)
            found += [(optuna.load_study(study_name=s.study_name, storage=storage), entry)
                      for s in storage.get_all_studies()]
        elif not valid_study_name(entry):
            raise UserError(f"study.warm_start.from: {entry!r} is neither a study name nor a storage URL")
        else:
            found.append(_by_name(entry, url))
    return [s for s, where in found if not (s.study_name == me and where == url)]  # never the new study itself


def _by_name(name: str, url: str) -> tuple[optuna.Study, str]:
    """(study `name`, its URL): in the new study's own storage if it is there, else in its default file."""
    storage = open_storage(url)
    if name in {s.study_name for s in storage.get_all_studies()}:
        return optuna.load_study(study_name=name, storage=storage), url
    try:
        return open_existing_study(name)
    except UserError as exc:
        raise UserError(f"study.warm_start.from: {exc} (looked in {shown(url)} too)") from None


def similarity(config: dict | None, space: Space) -> float:
    """LogME of a source winner's backbone on this space's training split (higher: more transferable here);
    -inf when this space cannot sample that backbone. The image size is the space's nearest to the source's."""
    if not config or config.get("backbone") not in {split_backbone(v)[0] for v in space.values("backbone")}:
        return -math.inf
    sizes = space.values("image_size")
    size = min(sizes, key=lambda s: abs(s - config.get("image_size", sizes[0])))
    probe = {**config, "dataset": space.fixed("dataset"), "split": tuple(space.fixed("split")),
             "split_seed": space.fixed("split_seed"), "weights": space.values("weights")[0], "image_size": size}
    return compute_logme(probe)


def plan(space: Space, log=print) -> list[dict]:
    """What a new study queues: [{source, trial, value, params (transferred), similarity?}], at most top_k."""
    spec = space.study.warm_start
    if not spec:
        return []
    top_k = spec["top_k"]
    if spec["from"] == "portfolio":
        groups = [portfolio_candidates()]
    else:
        studies = source_studies(space, spec["from"])
        if not studies:
            raise UserError(f"study.warm_start.from: {spec['from']!r}: no earlier study found")
        groups = [g for g in (candidates_from(s, top_k) for s in studies) if g]
        if not groups:
            names = ", ".join(s.study_name for s in studies)
            raise UserError(f"study.warm_start.from: no completed trial in {names}")
        if len(groups) > 1:
            for g in groups:
                score = similarity(g[0]["config"], space)
                for c in g:
                    c["similarity"] = round(score, 4) if math.isfinite(score) else None
                log(f"warm start: {g[0]['source']} (best {g[0]['value']:.4f}): LogME of its winner's backbone "
                    f"here {score:.4f}")
            groups.sort(key=lambda g: (-(g[0].get("similarity") or -math.inf), -g[0]["value"]))
    chosen, seen = [], set()
    for rank in range(max(len(g) for g in groups)):  # round-robin: every source's best before any second best
        for g in groups:
            if rank < len(g) and len(chosen) < top_k:
                params = transfer(g[rank]["params"], space)
                key = tuple(sorted(params.items()))
                if params and key not in seen:
                    seen.add(key)
                    chosen.append({k: v for k, v in {**g[rank], "params": params}.items() if k != "config"})
    return chosen


def on_new_study(study: optuna.Study, space: Space, log=print) -> None:
    """Queue the plan's configs as the study's first trials and record them; call only for a new study."""
    queued = plan(space, log)
    for entry in queued:
        origin = f"{entry['source']} trial {entry['trial']}" + (
            f" (value {entry['value']:.4f})" if entry["value"] is not None else "")
        study.enqueue_trial(entry["params"], user_attrs={"warm_start": origin}, skip_if_exists=True)
    if queued:
        study.set_user_attr(WARM_START_ATTR, queued)
        log(f"warm start: queued {len(queued)} configuration(s) first: "
            + "; ".join(f"{e['source']} #{e['trial']}" for e in queued))


def note_section(study: optuna.Study) -> str:
    """The study note's warm-start table (empty when the study did not start warm)."""
    queued = study.user_attrs.get(WARM_START_ATTR)
    if not queued:
        return ""
    lines = ["", "### Warm start", "", "Queued first, from earlier studies (only the params this space samples, "
             "clipped into its ranges):", "", "| source | trial | its value | LogME here | params |",
             "|---|---|---|---|---|"]
    for e in queued:
        value = f"{e['value']:.4f}" if e.get("value") is not None else "-"
        sim = f"{e['similarity']:.4f}" if e.get("similarity") is not None else "-"
        params = ", ".join(f"{k}={v}" for k, v in e["params"].items())
        lines.append(f"| {e['source']} | {e['trial']} | {value} | {sim} | {params} |")
    return "\n".join(lines) + "\n"
