"""The one error type of the training family: a user mistake or an environment problem as one sentence."""


class TrainingError(ValueError):
    """Why a training run or a conversion cannot go on, worded for the person who started it."""
