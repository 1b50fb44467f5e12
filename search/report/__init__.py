"""Reading a study: optuna-dashboard, the standalone HTML report, the markdown/CSV tables."""
