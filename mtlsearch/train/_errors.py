"""Errors of the training layer."""


class TrainingDiverged(RuntimeError):
    """A loss or a prediction became NaN or infinite. The message names the task and the
    epoch; the search records the trial as failed with it."""
