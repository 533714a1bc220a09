"""The errors the scoring package raises; the service maps ScoringError (and its subclass
`training.errors.TrainingError`) to HTTP 422."""


class ScoringError(ValueError):
    """A model or its inputs cannot be scored (wrong image size, a model with several inputs, an
    unknown precision, a device that is not there); the message says what and where."""


class ImageError(ValueError):
    """A file is not a readable image; the message names the file."""


class AudioClipError(ImageError):
    """An audio file of a dataset that gives no spectrogram: not audio, corrupt or truncated, silent, or
    not a 3-second clip. An ImageError, so every path that skips an unreadable image skips it alike; the
    message is "<file>: <reason>"."""
