"""After a study: export the winner (best.yaml), retrain it and test it once, convert it to TensorFlow Lite."""
