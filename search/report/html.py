"""A study as one standalone HTML file: Optuna's plotly figures plus two of our own.

write_html_report(study, path) embeds plotly.js once, so the file opens offline and can be mailed.
A figure that cannot be drawn for this study (too few trials, nothing varies) is replaced by one line
saying why, never by an exception: the report of a two-trial study is still a report.
"""

from __future__ import annotations

import datetime
import html
import math
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from search.errors import UserError
from search.models.freezing import get_strategy
from search.study.pareto import accuracy, cost, cost_name, format_cost, is_multi
from search.study.record import TrialRecord


class Skip(Exception):
    """This figure does not apply to this study; the message says why."""


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def _target(study):
    """What Optuna's plots show: the value itself (None), or accuracy, values[0], of a multi-objective study."""
    return accuracy if is_multi(study) else None


def history_figure(study):
    if not _completed(study):
        raise Skip("no completed trial yet")
    return optuna.visualization.plot_optimization_history(study, target=_target(study), target_name="val_accuracy")


def intermediate_figure(study):
    if is_multi(study):
        raise Skip("Optuna takes no per-epoch values from a multi-objective study; each trial's learning curve "
                   "is among its artifacts")
    if not any(t.intermediate_values for t in study.trials):
        raise Skip("no trial reported an epoch yet")
    return optuna.visualization.plot_intermediate_values(study)


def importance_figure(study):
    done = _completed(study)
    varying = [p for p in {k for t in done for k in t.params}
               if len({repr(t.params.get(p)) for t in done}) > 1]
    if len(done) < 2 or not varying:
        raise Skip(f"needs at least 2 completed trials whose parameters differ ({len(done)} completed)")
    return optuna.visualization.plot_param_importances(study, target=_target(study), target_name="val_accuracy")


def parallel_figure(study):
    if not _completed(study) or not any(t.params for t in _completed(study)):
        raise Skip("no completed trial with sampled parameters")
    return optuna.visualization.plot_parallel_coordinate(study, target=_target(study), target_name="val_accuracy")


def lr_depth_figure(study):
    """Learning rate against how much of the network trains (a share comparable across freezing strategies)."""
    rows = [t for t in _completed(study) if TrialRecord.of(t).config is not None and TrialRecord.of(t).params_total]
    if not rows:
        raise Skip("no completed trial with its config and parameter counts")
    by_freeze: dict[str, list] = {}
    for t in rows:
        by_freeze.setdefault(TrialRecord.of(t).config["freeze"], []).append(t)
    fig = go.Figure()
    symbols = ["circle", "square", "diamond", "triangle-up", "x"]
    values = [accuracy(t) for t in rows]
    for i, (freeze, trials) in enumerate(sorted(by_freeze.items())):
        cfgs = [TrialRecord.of(t).config for t in trials]
        fig.add_trace(go.Scatter(
            x=[c["learning_rate"] for c in cfgs],
            y=[100 * TrialRecord.of(t).params_trainable / TrialRecord.of(t).params_total for t in trials],
            mode="markers", name=f"freeze={freeze}",
            marker=dict(size=12, symbol=symbols[i % len(symbols)], color=[accuracy(t) for t in trials],
                        cmin=min(values), cmax=max(values), colorscale="Viridis", showscale=i == 0,
                        colorbar=dict(title="val_accuracy"), line=dict(width=1, color="black")),
            text=[f"trial {t.number}<br>{_depth(c)}<br>val_accuracy {accuracy(t):.4f}" for t, c in zip(trials, cfgs)],
            hovertemplate="%{text}<br>learning rate %{x:.2e}<br>trainable %{y:.1f}%<extra></extra>",
        ))
    fig.update_layout(title="Learning rate × unfrozen depth", xaxis_title="fine-tuning learning rate",
                      yaxis_title="trainable parameters (% of the model)", legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(type="log")
    return fig


def _depth(cfg: dict) -> str:
    return get_strategy(cfg["freeze"]).describe(cfg)


def backbone_figure(study):
    """val_accuracy of completed trials per backbone, with how many were pruned or failed."""
    groups: dict[str, list] = {}
    for t in study.trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            name = t.params.get("backbone") or (TrialRecord.of(t).config or {}).get("backbone", "?")
            groups.setdefault(name, []).append(t)
    if not any(t.state == TrialState.COMPLETE for ts in groups.values() for t in ts):
        raise Skip("no completed trial yet")
    fig = go.Figure()
    for name, trials in sorted(groups.items()):
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        failed = sum(t.state == TrialState.FAIL for t in trials)
        fig.add_trace(go.Box(
            y=[accuracy(t) for t in done], name=f"{name}<br>{len(done)} done, {pruned} pruned, {failed} failed",
            boxpoints="all", jitter=0.3, pointpos=0, text=[f"trial {t.number}" for t in done],
            hovertemplate="%{text}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Per-backbone comparison (completed trials)", yaxis_title="val_accuracy",
                      showlegend=False)
    return fig


def pareto_figure(study):
    if not _completed(study):
        raise Skip("no completed trial yet")
    return optuna.visualization.plot_pareto_front(study, target_names=["val_accuracy", cost_name(study)])


PARETO = ("Pareto front", "Validation accuracy against the cost each completed trial's model has; the front "
          "(no other trial is both more accurate and cheaper) is highlighted. `export --pick` chooses from it.",
          pareto_figure)

SECTIONS = (
    ("Optimisation history", "Validation accuracy per trial and the best so far.", history_figure),
    ("Intermediate values", "Validation accuracy per epoch of every trial; pruned trials stop early.",
     intermediate_figure),
    ("Parameter importances", "How much each sampled parameter explains validation accuracy.", importance_figure),
    ("Parallel coordinates", "Each line is a completed trial across its sampled parameters.", parallel_figure),
    ("Learning rate × unfrozen depth", "Fine-tuning learning rate against the share of the model that trains "
     "(comparable across freezing strategies); colour is validation accuracy.", lr_depth_figure),
    ("Per-backbone comparison", "Validation accuracy of completed trials for each backbone.", backbone_figure),
)


def write_html_report(study: optuna.Study, path) -> Path:
    """Write the report of `study` to `path` (folders created) and return the path."""
    path = Path(path)
    parts, first = [], True
    for title, caption, make in (PARETO, *SECTIONS) if is_multi(study) else SECTIONS:
        parts.append(f"<h2>{html.escape(title)}</h2><p class='caption'>{html.escape(caption)}</p>")
        try:
            fig = make(study)
        except Skip as why:
            parts.append(f"<p class='skip'>Not shown: {html.escape(str(why))}.</p>")
            continue
        except Exception as exc:  # one figure Optuna cannot draw must not lose the others
            parts.append(f"<p class='skip'>Not shown: {html.escape(type(exc).__name__)}: "
                         f"{html.escape(str(exc)[:300])}</p>")
            continue
        fig.update_layout(height=460, margin=dict(t=50, l=60, r=30, b=60))
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first, default_width="100%"))
        first = False
    page = _PAGE.format(title=html.escape(f"Study {study.study_name}"), summary=_summary(study),
                        body="\n".join(parts))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the HTML report {str(path)!r}: {exc.strerror}") from None
    return path


def _summary(study: optuna.Study) -> str:
    states = [t.state.name.lower() for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
    rows = sorted(_completed(study), key=lambda t: -accuracy(t))[:10]
    name = cost_name(study)  # None: one objective, no cost column
    table = "".join(
        f"<tr><td>{t.number}</td><td>{accuracy(t):.4f}</td>"
        + (f"<td>{format_cost(name, cost(t))}</td>" if name else "")
        + f"<td>{html.escape(_params(t))}</td>"
        f"<td>{_or_nan(TrialRecord.of(t).seconds_total):.1f}</td></tr>" for t in rows)
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    objective = (f"Objectives: validation accuracy (maximised) and {name} (minimised)" if name
                 else "Objective: validation accuracy (maximised)")
    return (f"<p>{len(states)} trials: {counts}. {objective}. "
            f"Generated {generated}.</p>"
            + ("<h2>Best trials</h2><table><tr><th>trial</th><th>val_accuracy</th>"
               + (f"<th>{html.escape(name)}</th>" if name else "") + "<th>parameters</th>"
               f"<th>seconds</th></tr>{table}</table>" if rows else ""))


def _params(t) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}"
                     for k, v in t.params.items())


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
.caption {{ color: #555; margin-top: -0.5em; }} .skip {{ color: #a60; font-style: italic; }}
</style></head>
<body><h1>{title}</h1>
{summary}
{body}
</body></html>
"""


def _or_nan(value) -> float:
    return float("nan") if value is None else value
