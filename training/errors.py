"""The errors the training package raises; the service maps TrainingError to HTTP 422."""


class TrainingError(ValueError):
    """The inputs cannot be trained on (empty or one-class data, wrong image size, unsupported
    loss or optimizer, a corrupt image); the message says what and where."""


class ImageError(ValueError):
    """A file is not a readable image; the message names the file."""
