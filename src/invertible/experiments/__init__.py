"""One module per thesis figure or table; see :mod:`invertible.experiments.registry`."""

from invertible.experiments.registry import RunContext, experiments, register, run_experiment

__all__ = ["RunContext", "experiments", "register", "run_experiment"]
