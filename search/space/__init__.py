"""Search spaces: YAML files validated on load (parse), their data (schema), and `sample`, the only caller of
`trial.suggest_*`.

A space has three sections (README: "Search spaces"):
  study:   name, storage, n_trials, timeout, seed, sampler, pruner   (how Optuna runs),
           objectives: [accuracy] (default) or [accuracy, latency_ms | params | size_mb] (a Pareto study),
           rank: {top_k, enqueue} (LogME ranking of the backbones when the study is created),
           validation: {folds: auto | K} (K-fold cross-validated trials; auto: search/folds.py decides)
  params:  any TrialConfig field, either fixed (a plain value) or sampled:
             {choices: [...]}                       categorical
             {low: L, high: H, log: true, step: S}  int or float, by the field's type
  enqueue: optional list of parameter dicts to try first (baselines such as the seeds' recipes)
  exported: optional metadata that `export` writes into best.yaml (trial, metrics, versions, dataset
            fingerprint); kept in Space.exported for `retrain` to check, never used by sampling
Conditional parameters are sampled only where they mean something (schema.condition), so the
dashboard never shows a momentum for Adam. Every mistake is found here, before any trial runs.
"""

from search.space.parse import load_space, parse_space
from search.space.sample import sample
from search.space.schema import (
                                 CHOICES,
                                 Param,
                                 Space,
                                 StudySettings,
                                 backbone_variants,
                                 condition,
                                 split_backbone,
                                 variants_of,
)

__all__ = ["CHOICES", "condition", "Param", "Space", "StudySettings", "backbone_variants", "load_space",
           "parse_space", "sample", "split_backbone", "variants_of"]
