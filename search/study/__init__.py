"""Studies: the Optuna side. Storage, creating and running a study, the objective, dashboard artifacts, workers,
Pareto fronts and the LogME ranking in a study."""
