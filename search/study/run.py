"""Create or resume a study from a space, check everything before the first trial, run it."""

from __future__ import annotations

import gc
import sys
import time
import warnings

import keras
import numpy as np
import optuna
from tqdm import tqdm

from search.data.datasets import data_summary, dataset_split, load_images, load_search_data
from search.data.folds import FOLDS_ATTR, choose_folds, study_folds
from search.errors import TrialError, UserError
from search.models.backbones import build_backbone, get_backbone
from search.space import Space, backbone_variants
from search.study import plan, prerank, warm_start
from search.study.artifacts import ArtifactReporter, artifact_dir, save_study_note
from search.study.objective import Objective, StopAfterFailures
from search.study.pareto import accuracy, cost, cost_name, format_cost, front, is_multi
from search.study.pruning import IncumbentRace, SameKindPruner, first_fold_step, trial_kind
from search.study.record import SPACE_ATTR, TrialRecord
from search.study.storage import Heartbeat, requeue_interrupted, sqlite_timeout
from search.study.storage import open_storage as _storage  # noqa: F401 (its old name here; tests use it)


def make_sampler(space: Space, seed: int | None = None, parallel: bool = False) -> optuna.samplers.BaseSampler:
    """seed: the study's unless given (each worker gets its own, or they would all propose the same
    params). parallel: TPE's constant liar, so a worker avoids the points other workers are running. A study that
    screens samples its search stage around the best screened pairs (plan.AroundTheBest)."""
    options = dict(space.study.sampler)
    kind = options.pop("type", "tpe")
    seed = space.study.seed if seed is None else seed
    if kind == "random":
        base = optuna.samplers.RandomSampler(seed=seed)
    else:
        if parallel:
            options.setdefault("constant_liar", True)
        base = optuna.samplers.TPESampler(seed=seed, **options)
    return plan.AroundTheBest(base) if plan.screening_trials(space) else base


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    """The space's pruner; with `per_kind: true`, median and successive halving judge each trial against its own
    kind only, frozen or fine-tuning, where the space samples both (search/study/pruning.py says why)."""
    options = dict(space.study.pruner)
    kind = options.pop("type", "median")
    per_kind = options.pop("per_kind", False)
    pruner = _optuna_pruner(space, kind, options)
    fixed = space.fixed("freeze")
    if not per_kind or len({trial_kind({"freeze": f}, fixed) for f in space.values("freeze")}) < 2:
        return pruner  # not asked for, or one kind only: nothing to separate
    return SameKindPruner(pruner, lambda params: trial_kind(params, fixed))


def _optuna_pruner(space: Space, kind: str, options: dict) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(**options)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if kind == "hyperband":  # its brackets rebuild the study from storage: no view of it can filter trials
        epochs = [w + f for w in space.values("warmup_epochs") for f in space.values("finetune_epochs")]
        return optuna.pruners.HyperbandPruner(max_resource=max(epochs), **options)
    if kind == "incumbent":
        return IncumbentRace(first_fold_step(space), **options)
    if kind == "threshold" and not space.study.cost:  # multi-objective: search.study.objective.AccuracyFloor instead
        return optuna.pruners.ThresholdPruner(**options)
    return optuna.pruners.NopPruner()


def directions(space: Space) -> list[str]:
    return ["maximize"] + ["minimize"] * (len(space.study.objectives) - 1)


def metric_names(space: Space) -> list[str]:
    """The axes' names in optuna-dashboard (and the trials_dataframe's values_* columns)."""
    return ["val_accuracy", *space.study.objectives[1:]]


def _is_locked(exc: BaseException | None) -> bool:
    """SQLite's "database is locked", possibly wrapped by SQLAlchemy and Optuna."""
    while exc is not None:
        if "database is locked" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def open_study(space: Space, storage=None, sampler=None) -> optuna.Study:
    """Create the study, or resume it if it exists and was made from the same space.

    The default storage records heartbeats, so a trial of a killed process is failed and retried once
    by the next run (search/study/storage.py)."""
    if storage is None:
        storage = _storage(space.study.storage_url, heartbeat=Heartbeat())
    try:
        study = optuna.create_study(
            study_name=space.study.name, storage=storage, load_if_exists=True, directions=directions(space),
            sampler=sampler or make_sampler(space), pruner=make_pruner(space),
        )
    except Exception as exc:
        if not _is_locked(exc):
            raise
        raise UserError(f"study store {space.study.storage_url} is locked by another process "
                        f"(waited {sqlite_timeout():.0f}s); try again when it is free") from None
    stored = study.user_attrs.get(SPACE_ATTR)
    _check_objectives(study, space, stored)
    if study.metric_names is None:  # a new study, or one made before every study named its objective
        with warnings.catch_warnings():  # optuna-dashboard shows this name, not "Objective 0"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(space))
    if stored is None:
        warm_start.on_new_study(study, space)  # study.warm_start: earlier studies' best configs, queued first
        baselines = prerank.on_new_study(study, space)  # study.rank: LogME ranking, once, before any trial
        study.set_user_attr(FOLDS_ATTR, resolve_folds(space))  # before the space: a study with one has both
        study.set_user_attr(SPACE_ATTR, space.raw)
        screens = plan.screening_trials(prerank.restricted(space, study))
        for params in screens:  # seconds each: first (plan.py)
            study.enqueue_trial(params, user_attrs={"stage": plan.SCREEN}, skip_if_exists=True)
        if screens:  # queued after the focus stage, when the screen is done (plan.queue_focus)
            study.set_user_attr(plan.LATER_ATTR, list(baselines))
        for params in [] if screens else baselines:  # baselines next, once, when the study is new
            study.enqueue_trial(params, skip_if_exists=True)
    elif stored.get("params") != space.raw.get("params"):
        changed = sorted(k for k in set(stored.get("params", {})) | set(space.raw.get("params", {}))
                         if stored.get("params", {}).get(k) != space.raw.get("params", {}).get(k))
        raise UserError(
            f"study {space.study.name!r} in {space.study.storage_url} was made from a different space "
            f"(params differ: {', '.join(changed)}); resume it with its own space or pick a new study.name")
    asked = space.study.validation["folds"]
    if stored is not None and asked != "auto" and asked != study_folds(study):
        raise UserError(f"study {space.study.name!r} in {space.study.storage_url} validates with "
                        f"{study_folds(study)} fold(s), this space asks for {asked}; its trials' values would not "
                        f"compare: resume it without study.validation or pick a new study.name")
    return study


def resolve_folds(space: Space) -> int:
    """K for a new study, from study.validation.folds and the data (search/data/folds.py)."""

    dataset, size = space.fixed("dataset"), space.values("image_size")[0]
    labels, classes = load_images(dataset, size)[1:3]
    train, val, _ = dataset_split(dataset, size, space.fixed("split"), space.fixed("split_seed"))
    counts = np.bincount(labels[np.concatenate([train, val])], minlength=len(classes))
    return choose_folds(space.study.validation["folds"], len(val), dict(zip(classes, counts.tolist())))


def describe_data(study: optuna.Study, space: Space) -> str:
    """The `data:` line: what was read and how it is split (search.data.datasets.data_summary)."""
    size = space.values("image_size")[0]  # the counts and sizes do not depend on the image size
    return data_summary(space.fixed("dataset"), size, space.fixed("split"), space.fixed("split_seed"),
                        study_folds(study))


def describe_validation(study: optuna.Study, space: Space) -> str:
    folds = study_folds(study)
    if folds == 1:
        return "validation: one train/validation split"
    return (f"validation: {folds}-fold cross-validation on the non-test images (study.validation.folds: "
            f"{space.study.validation['folds']}); a trial's value is its mean over the folds")


def _check_objectives(study: optuna.Study, space: Space, stored: dict | None) -> None:
    """A study keeps the objectives it was made with: its trials' values mean those."""
    want = list(space.study.objectives)
    # a space stored before objectives existed has none: it was [accuracy]; a new study has no space yet
    had = list((stored.get("study") or {}).get("objectives") or ["accuracy"]) if stored is not None else None
    if (had is None or had == want) and len(study.directions) == len(want):
        return
    made = f"[{', '.join(had)}]" if had else f"{len(study.directions)} objective(s)"
    raise UserError(f"study {space.study.name!r} in {space.study.storage_url} was made with objectives {made}, "
                    f"this space asks for [{', '.join(want)}]; resume it with its own objectives or pick a new "
                    f"study.name")


def prepare(space: Space) -> None:
    """Everything that can fail for the user's reasons, before the first trial: data, weights."""
    for size in space.values("image_size"):
        load_search_data(space.fixed("dataset"), size, space.fixed("split"), space.fixed("split_seed"))

    for backbone, alpha in backbone_variants(space):
        for weights in space.values("weights"):  # fails fast, e.g. no file, wrong architecture
            build_backbone(get_backbone(backbone), min(space.values("image_size")), weights, alpha)
            keras.backend.clear_session()


def print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, prefix: str = "") -> None:
    """One line per finished trial, instead of Keras's per-batch noise."""
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
    value = f"{accuracy(trial):.4f}" if accuracy(trial) is not None else "  -   "
    if TrialRecord.of(trial).cv_std is not None:  # cross-validated: the fold mean ± std
        value += f"±{TrialRecord.of(trial).cv_std:.4f}"
    if is_multi(study):  # no single best: the trial's cost and how many trials the Pareto front holds
        name = cost_name(study)
        spent = format_cost(name, cost(trial)) if cost(trial) is not None else "-"
        score = f"value={value} {name}={spent} front={len(study.best_trials)}"
    else:
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "  -   "
        score = f"value={value} best={best}"
    # only what is sampled prints (a fixed param is not in trial.params)
    keys = ("backbone", "image_size", "freeze", "unfreeze_layers", "unfreeze_blocks", "optimizer", "learning_rate",
            "lr_schedule", "layer_decay", "weight_decay", "l2sp", "dropout", "label_smoothing", "augment", "mix",
            "mix_alpha", "head_layers", "head_units")
    params = " ".join(f"{k}={_fmt(trial.params[k])}" for k in keys if k in trial.params)
    ended = TrialRecord.of(trial).ended or ""
    note = f" ({ended})" if trial.state != optuna.trial.TrialState.COMPLETE and ended else ""
    stage = TrialRecord.of(trial).stage or plan.SEARCH
    # tqdm.write prints above optuna's progress bar when one is shown, like print otherwise
    tqdm.write(f"{prefix}trial {trial.number:3d} {trial.state.name:8s} {stage:6s} {score} {params} {seconds:.1f}s{note}")
    sys.stdout.flush()


# A trial count this large with a timeout means "as many as the budget allows" (the benches pass 100_000):
# it is not a plan, and "[7/100000]" says nothing. The budget's time left is what the user wants to see.
AS_MANY_AS_FIT = 1000


def run_plan(n_trials: int, timeout: float | None) -> str:
    """What this run will do, in words, for the line printed before the first trial."""
    if timeout and n_trials >= AS_MANY_AS_FIT:
        return f"running trials until the budget of {_clock(timeout)} is spent"
    return f"running {n_trials} more" + (f" (at most {_clock(timeout)})" if timeout else "")


class Progress:
    """Trial callback: print_trial's line led by [finished/planned] for this run, and the budget's time left
    when there is one ([finished] alone when the budget, not a count, ends the run)."""

    def __init__(self, planned: int, deadline: float | None = None):
        """deadline: the time.monotonic() at which the run's budget ends (None: no budget)."""
        self.planned, self.finished, self.deadline = planned, 0, deadline

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.finished += 1
        count = str(self.finished) if self.deadline and self.planned >= AS_MANY_AS_FIT else \
            f"{self.finished}/{self.planned}"
        left = f", {_clock(max(0.0, self.deadline - time.monotonic()))} left" if self.deadline else ""
        print_trial(study, trial, prefix=f"[{count}{left}] ")


def _clock(seconds: float) -> str:
    """0:45, 12:03, 1:02:03: a budget as people read it."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _fmt(v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.2e}" if 0 < abs(v) < 1e-2 or abs(v) > 1e3 else f"{v:.3g}"  # 0.0 prints as 0


def run_study(space: Space, n_trials: int | None = None, timeout: float | None = None,
              reporters=None, started: float | None = None) -> optuna.Study:
    """reporters=None: the default, per-trial artifacts and notes for optuna-dashboard; () for none.
    started: the time.monotonic() the budget counts from (the command's start; default: now)."""
    started = time.monotonic() if started is None else started
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepare(space)
    study = open_study(space)
    save_study_note(study, space)
    space = prerank.restricted(space, study)  # study.rank's top_k, as recorded when the study was created
    if reporters is None:
        reporters = [ArtifactReporter(artifact_dir(space.study.name))]
    n_trials = n_trials or space.study.n_trials
    timeout = timeout or space.study.timeout
    finished = sum(t.state.is_finished() for t in study.trials)
    print(f"study {space.study.name!r} in {space.study.storage_url}: {finished} finished trial(s) so far, "
          f"{run_plan(n_trials, timeout)}", flush=True)
    print(describe_data(study, space), flush=True)
    print(describe_validation(study, space), flush=True)
    searching = plan.search_seconds(timeout, plan.delivers(space))  # the rest of the budget builds the delivered model
    deadline = started + searching if timeout else None  # running trials stop there too
    searching = deadline - time.monotonic() if timeout else None  # what is left of it after the preparations
    # On a terminal, optuna's tqdm bar (on stderr) adds the best value so far and an ETA under the lines.
    objective = Objective(space, reporters, deadline, budget_s=timeout)
    # The objective collects garbage after every trial (keras' clear_session; no gc_after_trial: a second full
    # pass, 0.4 s each in a fresh process, cProfile of the peer study). A full pass scans
    # every live object, TensorFlow's and the caller's included: in bench-peer's process, after KerasTuner's run,
    # that was 2-3 s a trial, a quarter of the search. Frozen, the objects alive now are not scanned again.
    gc.collect()
    gc.freeze()
    try:
        study.optimize(objective, n_trials=n_trials, timeout=max(searching, 0.0) if timeout else None, catch=(TrialError,),
                       callbacks=[Progress(n_trials, deadline), StopAfterFailures()],
                       show_progress_bar=sys.stderr.isatty())
    except KeyboardInterrupt:  # the CLI prints the one line; a resume runs the interrupted trial first
        requeue_interrupted(study, objective.interrupted, log=lambda line: None)
        raise
    finally:
        gc.unfreeze()  # collectable again once the study is done
    summarize(study, time.monotonic() - started)
    save_study_note(study, space)  # the note's incumbent and stop reasons, as the run left them
    return study


def summarize(study: optuna.Study, seconds: float) -> None:
    states = [t.state for t in study.trials]
    counts = {s.name.lower(): states.count(s) for s in set(states)}
    print(f"done in {seconds:.0f}s; trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best, worst = max(completed, key=accuracy), min(completed, key=accuracy)
        print(f"best  trial {best.number}: val_accuracy={accuracy(best):.4f} {best.params}")
        print(f"worst trial {worst.number}: val_accuracy={accuracy(worst):.4f} {worst.params}")
    if completed and is_multi(study):
        name = cost_name(study)
        print(f"Pareto front (val_accuracy up, {name} down), {len(study.best_trials)} trial(s):")
        for t in front(study):
            spent = format_cost(name, cost(t))
            print(f"  trial {t.number:3d}: val_accuracy={accuracy(t):.4f} {name}={spent} {t.params}")
