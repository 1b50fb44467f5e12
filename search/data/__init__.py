"""Data: decoding and splitting image folders and TFDS sets, the built-in shape tasks, cross-validation folds.
Imports only search.config and search.errors; TensorFlow only inside the pipeline functions."""
