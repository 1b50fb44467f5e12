"""transfer-search: Optuna studies that fine-tune Keras ImageNet backbones (see README.md)."""

__version__ = "0.1.0"
