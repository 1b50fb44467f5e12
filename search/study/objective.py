"""The Optuna objective: sample a TrialConfig, fine-tune it, report, record everything on the trial.

With K folds (the study's FOLDS_ATTR, search/data/folds.py) a trial is K trainings and its value their mean
validation accuracy. Pruning races across folds: inside fold 1 every fine-tuning epoch is reported at
step = epoch, as for a single split; after fold i (0-based) the running mean over folds 0..i is reported at
step = fold_step0 + i, past every epoch step, so steps only grow and a trial hopeless on fold 1 stops there.

A study's `timeout` is a deadline for running trials too: Optuna only stops starting new ones, and a full
fine-tune with folds can run 20 minutes past it. A running trial checks the deadline at each epoch's end and
between folds, and stops there, pruned at its last reported step (ended: "stopped at the study's deadline").
"""

from __future__ import annotations

import time
import traceback

import keras
import numpy as np
import optuna
from optuna_integration import KerasPruningCallback

from search import signals
from search.config import TrialConfig
from search.data.datasets import load_search_data
from search.data.folds import best_finetune_epochs, study_folds
from search.errors import TrialError, UserError
from search.models.build import head_weights
from search.models.cost import COSTS, architecture, measure
from search.models.freezing import get_strategy
from search.space import Space, sample
from search.study import plan
from search.study.heads import HeadStore
from search.study.members import Keeper
from search.study.pruning import first_fold_step, trial_kind
from search.study.record import TrialRecord, write
from search.training.crossval import CVResult, cross_validate
from search.training.train import TrainResult, train


def search_data_for(cfg: TrialConfig):
    """Train and validation parts for a config (decoded once per process, see search.data.datasets)."""
    return load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)


class Objective:
    """Callable objective; the decoded images live in search.data.datasets's per-process cache, not here.

    `reporters` run after every trial, whatever its end, as reporter(trial, cfg, curve, result,
    class_names) with result None for pruned or failed trials (artifacts, notes). A reporter that
    raises does not change the trial's outcome; its error is kept in the user attr "reporter_error".
    """

    def __init__(self, space: Space, reporters=(), deadline: float | None = None, budget_s: float | None = None):
        """deadline: a time.monotonic() value past which running trials stop (None: never); budget_s: the run's
        whole budget in seconds, which tells a cheap trial (see _cheap) from a dear one (None: every trial races)."""
        self.space = space
        self.reporters = list(reporters)
        self.deadline, self.budget_s = deadline, budget_s
        self.trial_started = time.monotonic()
        self.fold_step0 = first_fold_step(space)  # the first fold-level step: past every epoch step
        self.fold = 0  # the fold being trained (cross-validated trials), for the `ended` message
        self.interrupted: int | None = None  # the number of the trial a Ctrl-C or SIGTERM stopped
        self.heads = HeadStore(space.study.name)
        self._fixed = {name: space.fixed(name)  # what plan.cost_kind and plan.estimated_seconds read
                       for name in ("backbone", "image_size", "freeze", "augment", "mix", "finetune_epochs")}
        # the best trials' fold models, for delivery (search/deliver/ensemble.py); a Pareto study's choice is the user's
        self.keeper = Keeper(space.study.name) if plan.delivers(space) else None
        self.capped, self.running_mean, self._study = False, None, None  # per trial: see __call__ and over_share
        self.folds, self.curve, self.fold_started, self.fold_seconds = 1, [], 0.0, []  # per trial: cannot_finish

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.trial_started = time.monotonic()
        self.running_mean, self.fold = None, 0  # the folds' mean so far (the cost cap asks whether it leads)
        self._study, self.fold_started, self.fold_seconds = trial.study, self.trial_started, []
        cfg = sample(trial, self.space)
        write(trial, config=cfg.to_dict())
        if TrialRecord.of(trial).stage is None:
            write(trial, stage=plan.SEARCH)
        if TrialRecord.of(trial).stage != plan.SCREEN:  # a second chance, if two screens ended at once
            plan.queue_focus(trial.study, self.space)
        left = None if self.deadline is None else self.deadline - time.monotonic()
        screening = TrialRecord.of(trial).stage == plan.SCREEN
        why = plan.refusal(trial.study, trial.params, self._fixed, left, self.budget_s, TrialRecord.of(trial).stage)
        if why:  # before anything is built: a refused trial costs nothing
            write(trial, ended=f"not started: {why}")
            if screening:  # the last screen refused queues the focus stage
                plan.queue_focus(trial.study, self.space, (trial.number, None, trial.params))
            if left is not None and plan.nothing_fits(trial.study, left):
                trial.study.stop()  # nothing measured, or nothing the sampler draws, fits in the time left
            raise optuna.TrialPruned(f"not started: {why}")
        data = search_data_for(cfg)
        folds = study_folds(trial.study)
        # the images fold 1 (or the single split) validates on: the incumbent race's margin (study/pruning.py)
        write(trial, val_images=len(data.val.labels) if folds == 1
              else (len(data.train.labels) + len(data.val.labels)) // folds)
        curve: list[dict] = []
        self.folds, self.curve = folds, curve
        seconds_by_phase: dict = {}  # where the trial's time went (search.training.train.PHASES)
        result = None
        # a screening trial is never pruned: it costs seconds, and its folds' heads and out-of-fold predictions
        # are what LP-FT and the delivered ensemble are built from (search/study/plan.py)
        pruning = None if screening else self._pruning(trial, cfg)
        self.capped = not screening and self.budget_s is not None and self.space.study.cost is None
        callbacks = [c for c in (pruning, StopOnSignal(), self._deadline(), self._cap()) if c is not None]
        kept = False
        screened: list = []  # a screening trial's head per fold, for the fine-tuning trials (search/study/heads.py)
        head_for = self._screened_head(trial, cfg, folds)
        try:
            if self.keeper:
                self.keeper.begin(trial.number)

            head_only = not get_strategy(cfg.freeze).trains_backbone  # the backbone is the pretrained one

            def keep_fold(i, model):
                if self.keeper:
                    self.keeper.save_fold(trial.number, i, model, head_only)
                if screening:
                    screened.append(head_weights(model))

            if folds > 1:
                cv = cross_validate(cfg, folds, lambda i: self._fold_callbacks(i, callbacks, cfg), curve,
                                    lambda i, values: self._race(trial, i, folds, values), seconds_by_phase,
                                    keep_fold, head_for)
                result = cv.result
                record_result(trial, result)
                record_cv(trial, cv)
                probabilities, labels = cv.oof_probabilities, cv.labels
            else:
                result = train(cfg, data.train, data.val, data.class_names, callbacks=callbacks, curve=curve,
                               seconds_by_phase=seconds_by_phase, head=head_for(0))
                keep_fold(0, result.model)
                record_result(trial, result)
                write(trial, refit_epochs=best_finetune_epochs(curve, cfg.warmup_epochs))
                probabilities, labels = result.probabilities, data.val.labels
            if screened:
                self.heads.save(cfg, screened, trial.number)
            if screening:  # the last screen to end queues the focus stage (plan.py)
                plan.queue_focus(trial.study, self.space, (trial.number, result.metrics["accuracy"], trial.params))
            cost_name = self.space.study.cost
            if cost_name is None:
                if self.keeper:
                    self.keeper.finish(trial.number, result.metrics["accuracy"], cfg.to_dict(), probabilities, labels)
                    kept = True
                return result.metrics["accuracy"]
            spent = self._cost(trial, cost_name, result.model, cfg.image_size)
            write(trial, **{cost_name: spent})
            return result.metrics["accuracy"], spent
        except FoldPruned as exc:
            write(trial, ended=f"pruned {exc}")
            raise
        except (OverShare, CannotFinish, DeadlineReached) as exc:
            where = f" of fold {self.fold + 1} of {folds}" if folds > 1 else ""
            write(trial, ended=f"{exc} after epoch {exc.epoch + 1}{where}" if exc.epoch is not None
                                else f"{exc} after fold {self.fold + 1} of {folds}")
            if isinstance(exc, DeadlineReached):
                trial.study.stop()  # Optuna's own clock started a moment later than ours: start nothing more
            raise
        except optuna.TrialPruned as exc:
            why = f": {exc}" if isinstance(exc, BelowFloor) else ""
            if folds > 1 and self.fold > 0:  # a floor in a later fold (fold 1's curve is the trial's)
                write(trial, ended=f"pruned in fold {self.fold + 1} of {folds}{why}")
            else:
                fold = " of fold 1" if folds > 1 else ""
                write(trial, ended=f"pruned after epoch {curve[-1]['epoch'] if curve else 0}{fold}{why}")
            raise
        except TrialError as exc:
            write(trial, ended=f"failed: {exc}")
            raise
        except UserError:
            raise  # the user's to fix (stops the study), not this trial's
        except KeyboardInterrupt:  # the user stopped the run: not the config's failure (run_study queues it again)
            self.interrupted = trial.number
            write(trial, ended=f"interrupted ({signals.requested or 'SIGINT'}): queued again for the next run")
            raise
        except Exception as exc:  # a bug or an unforeseen library error: this trial fails, the study goes on
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            write(trial, ended=f"failed: {reason}")
            write(trial, traceback=traceback.format_exc()[-4000:])
            raise TrialError(reason) from exc
        finally:
            if self.keeper and not kept:
                self.keeper.discard(trial.number)
            write(trial, curve=[_round(r) for r in curve],
                  seconds_by_phase={k: round(v, 3) for k, v in seconds_by_phase.items()})
            for reporter in self.reporters:
                try:
                    reporter(trial, cfg, curve, result, data.class_names)
                except Exception as exc:  # an artifact that cannot be written must not lose the trial
                    write(trial, reporter_error=f"{type(exc).__name__}: {exc}"[:300])
            keras.backend.clear_session()  # without it memory grows trial after trial (it collects garbage too)

    def _screened_head(self, trial: optuna.Trial, cfg: TrialConfig, folds: int):
        """fold -> the screened head a fine-tuning trial starts from (LP-FT), or -> None (a fresh warm-up)."""
        if not get_strategy(cfg.freeze).trains_backbone:
            return lambda fold: None
        found = self.heads.load(cfg, folds)
        if found is None:
            return lambda fold: None
        heads, number = found
        write(trial, head_from=f"screened head of trial {number}")
        return lambda fold: heads[fold]

    @staticmethod
    def _cost(trial: optuna.Trial, name: str, model, image_size: int) -> float:
        """The cost of the full image -> softmax model; a latency already measured in this study for the same
        architecture is reused (search/models/cost.py says why)."""
        if not COSTS[name].per_architecture:
            return measure(name, model, image_size)  # exact: nothing to reuse
        key = architecture(model)
        write(trial, architecture=key)
        for done in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            record = TrialRecord.of(done)
            if record.architecture == key and record.cost(name) is not None:
                return record.cost(name)
        return measure(name, model, image_size)

    def _fold_callbacks(self, fold: int, first: list, cfg: TrialConfig) -> list:
        """Fold 1: the trial's callbacks (per-epoch pruning). Folds 2..K: no per-epoch report (those steps
        belong to fold 1); a Pareto study's floor still applies per epoch."""
        self.fold, self.fold_started = fold, time.monotonic()
        if fold == 0:
            return first
        floor = self._pruning(None, cfg) if self.space.study.cost is not None else None
        return [c for c in (floor, StopOnSignal(), self._deadline(), self._cap()) if c is not None]

    def _deadline(self):
        return None if self.deadline is None else StopAtDeadline(self.deadline)

    def _cap(self):
        return CapShare(self) if self.capped else None

    def over_share(self, value: float | None) -> bool:
        """The trial has run for over plan.MAX_SHARE of the budget and does not lead: neither `value` (this epoch's
        validation accuracy, fold 1) nor its running mean over the folds done reaches the study's best value."""
        if not self.capped or time.monotonic() - self.trial_started <= plan.MAX_SHARE * self.budget_s:
            return False
        evidence = [v for v in (value if self.fold == 0 else None, self.running_mean) if v is not None]
        best = _best_value(self._study)
        return best is not None and not any(v >= best for v in evidence)

    def cannot_finish(self, between_folds: bool = False) -> str | None:
        """Why the trial's folds to go cannot end before the deadline, or None. In fold 1 a later fold is taken to
        last as long as fold 1's epochs so far (a bound from below: fold 1 is not over, its features are not
        counted); later, as long as the folds done did on average (fold 1 by its epochs only: on the proxy its wall
        time, a features pass for every fold included, once stopped a focus trial that then fit). On tf_flowers a
        full fine-tune at 224 px started 15 min before the end (its kind never measured, so the cost model could not
        refuse it) and was cut there in fold 2 of 3, 38 % of the search spent on a trial that could not complete."""
        if not self.capped or self.deadline is None or self.folds < 2:
            return None
        now = time.monotonic()
        if self.fold_seconds:  # after fold 1: the folds not done yet, at the folds done's pace
            per_fold = sum(self.fold_seconds) / len(self.fold_seconds)
            to_go = per_fold * (self.folds - len(self.fold_seconds))
            if not between_folds:  # inside a fold: the part of it still to go
                to_go -= min(per_fold, now - self.fold_started)
        else:
            to_go = self._fold_1_epoch_seconds() * (self.folds - 1)
        left = self.deadline - now
        if to_go > left:
            return f"cannot finish in the time left: about {to_go:.0f} s of folds to go, {left:.0f} s left"
        return None

    def _fold_1_epoch_seconds(self) -> float:
        """Fold 1's epochs so far, in seconds: a later fold's pace (its wall time also holds one-off costs)."""
        return sum(record.get("seconds", 0.0) for record in self.curve)

    def _race(self, trial: optuna.Trial, fold: int, folds: int, values: list[float]) -> None:
        """After fold `fold`: record the folds so far (a pruned trial keeps them) and report their mean."""
        mean = sum(values) / len(values)
        self.running_mean = mean
        spent = time.monotonic() - self.fold_started
        if fold == 0:  # fold 1 also paid the trial's one-off costs (the frozen part's outputs for every fold, traces)
            spent = self._fold_1_epoch_seconds() or spent
        self.fold_seconds.append(spent)
        write(trial, cv_fold_values=[round(v, 5) for v in values])
        if fold == folds - 1:
            return  # the last fold: the value itself follows
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineReached(None)
        if self.over_share(None):
            raise OverShare(None)
        why = self.cannot_finish(between_folds=True)
        if why:
            raise CannotFinish(why, None)
        if self.space.study.cost is not None:
            return  # multi-objective: Optuna cannot prune
        step = self.fold_step0 + fold
        trial.report(mean, step=step)
        if self.space.study.pruner["type"] == "none" or TrialRecord.of(trial).stage == plan.SCREEN:
            return  # no pruning asked for, or a screening trial (never raced: see __call__)
        if self._leads(trial, mean):
            return  # at or above the study's best value: the race never stops the trial that leads
        if self._cheap(fold, folds):
            return  # its other folds cost next to nothing: stopping it saves nothing and risks a good config
        trails = self._trails_incumbent(trial, fold, mean)
        if trails:
            raise FoldPruned(f"after fold {fold + 1} of {folds}: mean val_accuracy {mean:.4f} so far, {trails}")
        if self._loses_race(trial, step, mean):
            raise FoldPruned(f"after fold {fold + 1} of {folds}: mean val_accuracy {mean:.4f} so far")

    def _cheap(self, fold: int, folds: int) -> bool:
        """The folds left would take at most CHEAP_SHARE of the run's budget, at the pace of the folds so far."""
        if not self.budget_s:
            return False
        per_fold = (time.monotonic() - self.trial_started) / (fold + 1)
        return per_fold * (folds - fold - 1) <= CHEAP_SHARE * self.budget_s

    @staticmethod
    def _leads(trial: optuna.Trial, mean: float) -> bool:
        """The running mean is at or above every completed trial's value. Folds differ: other trials' means after
        fold 1 can sit above their final values, and a median of those once stopped a 5-second frozen trial at
        0.9024 while the study's best was 0.8968 (issue 27)."""
        best = _best_value(trial.study)
        return best is not None and mean >= best

    @staticmethod
    def _trails_incumbent(trial: optuna.Trial, fold: int, mean: float) -> str | None:
        """Why the trial is clearly behind the incumbent (the best completed trial), or None: its running mean is
        below the incumbent's value by more than two standard errors of a mean of fold+1 folds, the fold spread
        being the incumbent's own (at least MIN_FOLD_STD). The median of all trials says little once a strong
        incumbent exists: a trial at the median then only wastes its remaining folds."""
        try:
            best = trial.study.best_trial
        except ValueError:
            return None  # nothing completed yet
        spread = max(TrialRecord.of(best).cv_std or 0.0, MIN_FOLD_STD)
        margin = 2 * spread / (fold + 1) ** 0.5
        if mean < best.value - margin:
            return f"below the incumbent's {best.value:.4f} (trial {best.number}) by more than {margin:.4f}"
        return None

    def _loses_race(self, trial: optuna.Trial, step: int, mean: float) -> bool:
        """The median rule on the running mean itself. Optuna's median pruner judges a trial by its best value
        over all its steps, and fold 1's epoch peaks would then shield a trial whose later folds fail: compare
        the mean after this fold with the completed trials' (of its kind, with per_kind) means after the same
        fold. Other pruners decide as they do for epochs."""
        pruner = self.space.study.pruner
        if pruner["type"] == "incumbent":
            return False  # its fold-level rule is _trails_incumbent's; its epoch rungs are fold 1's only
        if pruner["type"] != "median":
            return trial.should_prune()
        if step < pruner.get("n_warmup_steps", 0):
            return False
        fixed = self.space.fixed("freeze")
        mine = trial_kind(trial.params, fixed)  # per_kind: its own kind only, as search/study/pruning.py does
        completed = [t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if not pruner.get("per_kind") or trial_kind(t.params, fixed) == mine]
        at_step = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        if len(completed) < pruner.get("n_startup_trials", 5) or not at_step:
            return False
        return mean < float(np.median(at_step))

    def _pruning(self, trial: optuna.Trial, cfg: TrialConfig):
        if self.space.study.cost is None:
            return FineTunePruning(trial, first_epoch=cfg.warmup_epochs if cfg.finetune_epochs > 0 else 0)
        # Multi-objective: Optuna's trial.report/should_prune raise NotImplementedError, so no Optuna pruner;
        # the threshold rule, if the space asks for it, is applied here. Phase 2's early stopping still cuts
        # every trial short once validation accuracy stops improving.
        pruner = self.space.study.pruner
        if pruner["type"] == "threshold":
            return AccuracyFloor(pruner["lower"], pruner.get("n_warmup_steps", 0))
        return None


# A trial whose remaining folds cost at most this share of the budget is not raced: on a 13-class set a 4.7 s
# frozen trial was stopped after fold 1, above the study's best (issue 27); its 2 other folds would have cost 3 s.
CHEAP_SHARE = 0.01
# the least fold-to-fold spread the incumbent race assumes (a 3-fold incumbent can show a std of 0 by chance)
MIN_FOLD_STD = 0.01


class FineTunePruning(KerasPruningCallback):
    """optuna-integration's callback (it works with Keras 3: val_accuracy reported at step = epoch; phase 2
    continues the epoch count), reporting the fine-tuning epochs only.

    Optuna's median and percentile pruners compare a trial's BEST value so far with the other trials' values
    at the same step. Were the head warm-up reported, a trial whose warm-up went well could never be pruned
    however badly fine-tuning then went: on flowers a full fine-tune at learning rate 2e-3 fell from 0.87 to
    0.19 at its first fine-tuning epoch and ran on to the end. The warm-up itself is cheap (cached) and nearly
    the same recipe for every trial; its epochs stay in the trial's curve."""

    def __init__(self, trial: optuna.Trial, first_epoch: int):
        super().__init__(trial, "val_accuracy")
        self.first_epoch = first_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.first_epoch:
            super().on_epoch_end(epoch, logs)


class FoldPruned(optuna.TrialPruned):
    """Pruned between folds: the running mean over the folds so far lost the race (message says where)."""


class DeadlineReached(optuna.TrialPruned):
    """The study's deadline passed while this trial ran; `epoch` is where it stopped (None: between folds)."""

    def __init__(self, epoch: int | None):
        super().__init__("stopped at the study's deadline")
        self.epoch = epoch


def _best_value(study: optuna.Study) -> float | None:
    """The best value of the completed trials (None: none completed yet): what a trial must reach to lead."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.value is not None]
    return max(values) if values else None


class OverShare(optuna.TrialPruned):
    """The trial ran over plan.MAX_SHARE of the budget without leading (`epoch`: where; None: between folds)."""

    def __init__(self, epoch: int | None):
        super().__init__(f"stopped over its share of the budget ({plan.MAX_SHARE:.0%}) without leading")
        self.epoch = epoch


class CannotFinish(optuna.TrialPruned):
    """The trial's folds to go cannot end before the deadline (Objective.cannot_finish; `epoch`: where)."""

    def __init__(self, why: str, epoch: int | None):
        super().__init__(f"stopped: {why}")
        self.epoch = epoch


class CapShare(keras.callbacks.Callback):
    """Ends a trial at the first epoch end where Objective.over_share says it has had its share of the budget, or
    Objective.cannot_finish says its folds to go cannot end before the deadline."""

    def __init__(self, objective: Objective):
        super().__init__()
        self.objective = objective

    def on_epoch_end(self, epoch, logs=None):
        if self.objective.over_share((logs or {}).get("val_accuracy")):
            raise OverShare(epoch)
        why = self.objective.cannot_finish()
        if why:
            raise CannotFinish(why, epoch)


class StopAtDeadline(keras.callbacks.Callback):
    """Ends a running trial at the first epoch end past the study's deadline (time.monotonic())."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() >= self.deadline:
            raise DeadlineReached(epoch)


class BelowFloor(optuna.TrialPruned):
    """Pruned by AccuracyFloor (its message says at what accuracy)."""


class AccuracyFloor(keras.callbacks.Callback):
    """Optuna's ThresholdPruner rule for a study Optuna cannot prune: from epoch `n_warmup_steps` on (both
    phases counted), a trial whose validation accuracy is below `lower` (or NaN) is pruned. In a Pareto study
    this also keeps a cheap model that learned nothing off the front: only completed trials can be on it."""

    def __init__(self, lower: float, n_warmup_steps: int = 0):
        super().__init__()
        self.lower, self.n_warmup_steps = lower, n_warmup_steps

    def on_epoch_end(self, epoch, logs=None):
        accuracy = float((logs or {}).get("val_accuracy", float("nan")))
        if epoch >= self.n_warmup_steps and not accuracy >= self.lower:
            raise BelowFloor(f"val_accuracy {accuracy:.4f} below the floor {self.lower:g}")


def _round(record: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()}


def record_result(trial: optuna.Trial, result: TrainResult) -> None:
    m = result.metrics
    attrs = {
        "ended": "completed",
        "val_accuracy": m["accuracy"],
        "val_macro_precision": m["macro_precision"],
        "val_macro_recall": m["macro_recall"],
        "val_macro_f1": m["macro_f1"],
        "val_per_class_f1": {name: round(c["f1"], 4) for name, c in m["per_class"].items()},
        "val_confusion_matrix": m["confusion_matrix"],
        "initial_val_accuracy": result.initial_accuracy,
        "train_accuracy": result.train_accuracy,
        "train_val_gap": result.train_accuracy - m["accuracy"],
        "params_total": result.params_total,
        "params_trainable": result.params_trainable,
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
        "seconds_total": round(result.seconds_total, 3),
    }
    write(trial, **attrs)


def record_cv(trial: optuna.Trial, cv: CVResult) -> None:
    """Fold values, their mean ± std and the refit's epoch count, where the dashboard and export read them."""
    mean, std = cv.mean_std
    attrs = {"cv_folds": len(cv.fold_values), "cv_fold_values": [round(v, 5) for v in cv.fold_values],
             "cv_mean": mean, "cv_std": std, "cv_best_epochs": cv.best_epochs, "refit_epochs": cv.refit_epochs}
    write(trial, **attrs)


class StopOnSignal(keras.callbacks.Callback):
    """Re-raise a Ctrl-C or SIGTERM that Python swallowed in a finalizer (see search.signals)."""

    def on_epoch_end(self, epoch, logs=None):  # not per batch: batch hooks would slow every step
        if signals.requested:
            raise KeyboardInterrupt(signals.requested)


class StopAfterFailures:
    """Study callback: stop after `limit` failed trials in a row, which means a bug, not bad luck."""

    def __init__(self, limit: int = 3):
        self.limit, self.in_a_row = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == optuna.trial.TrialState.FAIL
        self.in_a_row = self.in_a_row + 1 if failed else 0
        if self.in_a_row >= self.limit:
            print(f"stopping: the last {self.limit} trials failed (last: {TrialRecord.of(trial).ended or '?'})",
                  flush=True)
            study.stop()
