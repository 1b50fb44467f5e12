"""LogME ranking in a study (`study.rank`), and how well it agreed with fine-tuning (`rank-check`).

`study: {rank: {top_k: K, enqueue: N}}` in a space. When the study is created (never on resume), before
its first trial, search.training.rank.rank_space scores every (backbone, alpha, image size) the space can produce;
a backbone CHOICE (a value of `params.backbone`, e.g. `mobilenet_v2@0.5`, or `mobilenet_v2` with a sampled
alpha) scores the best LogME of its variants (alphas x image sizes), because the search can still pick that
choice's best alpha and size. Then:
  top_k: K   the study samples `backbone` only among the K best choices. The study keeps storing and
             comparing the ORIGINAL space (so a resume with the same file is accepted); the kept choices
             are the study user attr "rank_kept", re-applied by `restricted` on every resume and in every
             worker, without ranking again. Baselines of `enqueue:` that name a dropped backbone are not
             queued (Optuna cannot fix a param to a value outside its choices); "rank_skipped_baselines"
             records them.
  enqueue: N the N best choices are queued as the first trials with only `backbone` fixed (every other
             param sampled as usual), before the `enqueue:` baselines; "rank_enqueued" records them.
  {}         rank and record only.
The per-variant table is the study user attr "ranking" and a section of the study note (optuna-dashboard).

`check_agreement` (the `rank-check` command) reads a finished study, groups its COMPLETE trials by
(backbone, alpha, image size[, weights]) from their "config" attr, and compares the groups' LogME (the
stored ranking where it has the group, else computed now) with their best validation accuracy: Kendall's
tau over the groups.
"""

from __future__ import annotations

import dataclasses
import math
import time

import optuna
from scipy.stats import kendalltau

from search.config import FIELD_TYPES, TrialConfig
from search.data.datasets import load_search_data
from search.errors import UserError
from search.models.backbones import BACKBONES, variant_name
from search.space import split_backbone, variants_of
from search.study.pareto import accuracy
from search.study.record import TrialRecord
from search.training import rank as ranking
from search.training.logme import logme
from search.training.rank import features_of, kendall_tau

RANKING_ATTR = "ranking"  # per-variant rows: backbone, alpha, image_size, weights, choice, logme, rank...
KEPT_ATTR = "rank_kept"  # the backbone choices the study samples from (top_k)
ENQUEUED_ATTR = "rank_enqueued"  # the backbone choices queued as the first trials (enqueue)
SKIPPED_ATTR = "rank_skipped_baselines"  # `enqueue:` baselines not queued: their backbone was dropped


def _say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------- a new study


def _ranked_weights(space) -> str:
    """The weights rank_space builds with: the space's fixed weights, else TrialConfig's default."""
    p = space.params.get("weights")
    return p.fixed if p is not None and p.is_fixed else TrialConfig().weights


def score_choices(space, rows) -> list[dict]:
    """One dict per backbone choice, best first: choice, logme (its best variant's), alpha, image_size."""
    out = []
    for choice in space.params["backbone"].choices:
        variants = set(variants_of(choice, space))
        mine = [r for r in rows if (r.backbone, r.alpha) in variants]
        best = max(mine, key=lambda r: r.logme)
        out.append({"choice": choice, "logme": best.logme, "alpha": best.alpha, "image_size": best.image_size,
                    "variants": len(mine)})
    out.sort(key=lambda c: -c["logme"])
    for i, c in enumerate(out, start=1):
        c["rank"] = i
    return out


def rank_space(space):
    """search.training.rank.rank_space (a seam for tests)."""
    return ranking.rank_space(space)


def on_new_study(study, space, log=_say) -> list[dict]:
    """Rank, record, queue the best, when `study.rank` is set; the `enqueue:` baselines left to queue.

    Called by search.study.run.open_study once, when the study is new, before its `enqueue:` baselines."""
    option = space.study.rank
    if option is None:
        return list(space.enqueue)
    choices = space.params["backbone"].choices
    log(f"ranking {len(choices)} backbone choice(s) by LogME on the train split before the first trial ...")
    started = time.perf_counter()
    rows = rank_space(space)
    scored = score_choices(space, rows)
    weights = _ranked_weights(space)
    first_choice = {}
    for choice in choices:
        for variant in variants_of(choice, space):
            first_choice.setdefault(variant, choice)
    study.set_user_attr(RANKING_ATTR, [
        {**dataclasses.asdict(r), "weights": weights, "choice": first_choice.get((r.backbone, r.alpha))}
        for r in rows])
    top_k, n_enqueue = option.get("top_k"), option.get("enqueue", 0)
    kept = [c["choice"] for c in scored[:top_k]] if top_k else list(choices)
    enqueued = [c["choice"] for c in scored[:n_enqueue]]
    if top_k:
        study.set_user_attr(KEPT_ATTR, [c for c in choices if c in kept])  # the space's order
    if n_enqueue:
        study.set_user_attr(ENQUEUED_ATTR, enqueued)
    for choice in enqueued:  # best first
        study.enqueue_trial({"backbone": choice}, skip_if_exists=True)
    baselines = [p for p in space.enqueue if "backbone" not in p or p["backbone"] in kept]
    skipped = [p for p in space.enqueue if p not in baselines]
    if skipped:
        study.set_user_attr(SKIPPED_ATTR, skipped)
    log(f"LogME ranking ({time.perf_counter() - started:.1f}s, {len(rows)} variant(s)):")
    for c in scored:
        log(f"  {c['rank']:2d} {c['choice']:24s} LogME {c['logme']:8.4f} (best variant: {_variant(c)})  "
            f"{_action(c['choice'], top_k, kept, enqueued)}")
    for p in skipped:
        log(f"  baseline {p} not queued: backbone {p['backbone']} was dropped")
    return baselines


def _variant(c: dict) -> str:
    alpha = "" if split_backbone(c["choice"])[1] is not None or c["alpha"] == 1.0 else f"alpha {c['alpha']:g}, "
    return f"{alpha}{c['image_size']} px"


def _action(choice: str, top_k, kept: list, enqueued: list) -> str:
    words = ([("kept" if choice in kept else "dropped")] if top_k else ["ranked"])
    return ", ".join(words + (["enqueued"] if choice in enqueued else []))


# ----------------------------------------------------------------------------- resume, every worker


def restricted(space, study, log=_say):
    """The space the study samples from: backbone limited to the study's "rank_kept" choices, if any.

    Read from the study, never re-ranked, so a resume and every worker sample what the creator kept."""
    attrs = study.user_attrs
    kept = attrs.get(KEPT_ATTR)
    if space.study.rank is not None and RANKING_ATTR not in attrs:
        log("note: study.rank is ignored: the study existed before it was set (ranking happens only when a "
            "study is created)")
    backbone = space.params.get("backbone")
    if not kept or backbone is None or backbone.choices is None:
        return space
    choices = tuple(c for c in backbone.choices if c in kept)
    if not choices:
        return space  # the stored-space check makes this impossible; never sample from nothing
    params = {**space.params, "backbone": dataclasses.replace(backbone, choices=choices)}
    return dataclasses.replace(space, params=params)


def note_section(study) -> str:
    """Markdown for the study note: the LogME ranking and what it did ("" without one)."""
    attrs = study.user_attrs
    rows = attrs.get(RANKING_ATTR)
    if not rows:
        return ""
    kept, enqueued = attrs.get(KEPT_ATTR), attrs.get(ENQUEUED_ATTR) or []
    lines = ["", "", "### LogME ranking (before the first trial)", "",
             "| rank | backbone | alpha | image | LogME | choice | done |", "| ---: | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        choice = r.get("choice")
        done = _action(choice, kept is not None, kept or [], enqueued)
        lines.append(f"| {r['rank']} | {r['backbone']} | {r['alpha']:g} | {r['image_size']} px | {r['logme']:.4f} "
                     f"| `{choice}` | {done} |")
    if kept is not None:
        lines += ["", "Backbone sampled only among: " + ", ".join(f"`{c}`" for c in kept) + "."]
    if enqueued:
        lines += ["", "Queued first (backbone fixed, the rest sampled): " + ", ".join(f"`{c}`" for c in enqueued) + "."]
    if attrs.get(SKIPPED_ATTR):
        lines += ["", f"{len(attrs[SKIPPED_ATTR])} `enqueue:` baseline(s) not queued: their backbone was dropped."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- rank-check


@dataclasses.dataclass
class Group:
    backbone: str
    alpha: float
    image_size: int
    weights: str
    config: dict  # one trial's config: what computing its LogME needs
    accuracies: list[float] = dataclasses.field(default_factory=list)
    logme: float = math.nan
    source: str = ""  # "stored" (the study's ranking) or "computed"
    logme_rank: int = 0
    accuracy_rank: int = 0

    @property
    def best(self) -> float:
        return max(self.accuracies)

    @property
    def top3(self) -> float:
        top = sorted(self.accuracies, reverse=True)[:3]
        return sum(top) / len(top)

    def label(self, with_weights: bool) -> str:
        weights = f", weights {self.weights}" if with_weights else ""
        return f"{variant_name(self.backbone, self.alpha)}, {self.image_size} px{weights}"


@dataclasses.dataclass
class Agreement:
    study: str
    groups: list[Group]
    tau: float  # LogME vs best validation accuracy
    p_value: float
    tau_top3: float  # LogME vs the mean of each group's 3 best accuracies
    not_tried: list[str]  # ranked choices with no completed trial (e.g. dropped by top_k)


def group_trials(study) -> list[Group]:
    """COMPLETE trials grouped by (backbone, alpha, image size, weights) of their "config" attr."""

    groups: dict[tuple, Group] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        config, value = TrialRecord.of(t).config, accuracy(t)
        if not config or value is None or config.get("backbone") not in BACKBONES:
            continue
        alpha = float(config.get("alpha", 1.0)) if BACKBONES[config["backbone"]].has_alpha else 1.0
        key = (config["backbone"], alpha, int(config.get("image_size", 32)), str(config.get("weights")))
        group = groups.setdefault(key, Group(*key, config=config))
        group.accuracies.append(float(value))
    return list(groups.values())


def compute_logme(config: dict) -> float:
    """LogME of the frozen pooled features of a config's train split (through the feature cache)."""
    cfg = TrialConfig.from_dict({k: v for k, v in config.items() if k in FIELD_TYPES})
    data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    return logme(features_of(cfg, data.train.images), data.train.labels)


def _ranks(values: list[float]) -> list[int]:
    """1 for the highest; equal values share the better rank."""
    return [1 + sum(v > x for v in values) for x in values]


def check_agreement(study, recompute: bool = False, log=_say) -> Agreement:

    groups = group_trials(study)
    if len(groups) < 2:
        raise UserError(f"study {study.study_name!r} has {len(groups)} group(s) of completed trials by "
                        f"(backbone, alpha, image size); rank-check needs at least 2")
    stored = {} if recompute else {
        (r["backbone"], float(r["alpha"]), int(r["image_size"]), str(r.get("weights"))): r["logme"]
        for r in study.user_attrs.get(RANKING_ATTR) or []}
    for g in groups:
        key = (g.backbone, g.alpha, g.image_size, g.weights)
        if key in stored:
            g.logme, g.source = stored[key], "stored"
        else:
            log(f"computing LogME of {g.label(False)} ...")
            g.logme, g.source = compute_logme(g.config), "computed"
    for g, rank in zip(groups, _ranks([g.logme for g in groups])):
        g.logme_rank = rank
    for g, rank in zip(groups, _ranks([g.best for g in groups])):
        g.accuracy_rank = rank
    groups.sort(key=lambda g: (g.logme_rank, -g.best))
    scores = [g.logme for g in groups]
    tau = kendall_tau(scores, [g.best for g in groups])
    p_value = float(kendalltau(scores, [g.best for g in groups]).pvalue)
    tau_top3 = kendall_tau(scores, [g.top3 for g in groups])
    tried = {(g.backbone, g.alpha) for g in groups}
    by_choice: dict[str, set] = {}  # ranked choice -> its variants, best-ranked choice first
    for r in study.user_attrs.get(RANKING_ATTR) or []:
        if r.get("choice"):
            by_choice.setdefault(r["choice"], set()).add((r["backbone"], float(r["alpha"])))
    not_tried = [c for c, variants in by_choice.items() if not variants & tried]
    return Agreement(study.study_name, groups, tau, p_value, tau_top3, not_tried)


def _num(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _sources(sources: set) -> str:
    if sources == {"stored"}:
        return "the study's stored ranking (study.rank)."
    if sources == {"computed"}:
        return "* computed by rank-check."
    return "the study's stored ranking (study.rank); * computed by rank-check (no stored score)."


def agreement_markdown(result: Agreement) -> str:
    with_weights = len({g.weights for g in result.groups}) > 1
    lines = [f"# LogME ranking vs fine-tuning: study `{result.study}`", "",
             "| candidate | LogME | LogME rank | trials | best val accuracy | accuracy rank | mean of top 3 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for g in result.groups:
        mark = "" if g.source == "stored" else " *"
        lines.append(f"| {g.label(with_weights)} | {g.logme:.4f}{mark} | {g.logme_rank} | {len(g.accuracies)} "
                     f"| {g.best:.4f} | {g.accuracy_rank} | {g.top3:.4f} |")
    lines += [
        "",
        f"Kendall's tau (LogME vs best validation accuracy) over {len(result.groups)} groups: "
        f"**{_num(result.tau, 3)}** (p = {_num(result.p_value, 3)}); vs the mean of the top 3 trials: "
        f"{_num(result.tau_top3, 3)}.",
        "",
        "Groups: COMPLETE trials by (backbone, alpha, image size" + (", weights" if with_weights else "")
        + "). LogME: " + _sources({g.source for g in result.groups}),
    ]
    if result.not_tried:
        lines += ["", "Ranked but never completed (e.g. dropped by top_k): "
                  + ", ".join(f"`{c}`" for c in result.not_tried) + "."]
    return "\n".join(lines) + "\n"
