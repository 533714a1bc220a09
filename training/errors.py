"""The errors the training package raises; the service maps TrainingError to HTTP 422."""

from scoring.errors import ScoringError


class TrainingError(ScoringError):
    """The inputs cannot be trained on (empty or one-class data, wrong image size, unsupported
    loss or optimizer, a corrupt image); the message says what and where."""
