"""Training one config: two-phase fine-tuning, the feature cache and its cuts, metrics, LogME ranking and
K-fold cross-validation. Keras, no Optuna."""
