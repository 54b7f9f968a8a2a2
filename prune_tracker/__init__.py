"""prune-tracker: an MLflow-tracked laboratory for pruning CIFAR convolutional networks."""

__version__ = "0.1.0"
