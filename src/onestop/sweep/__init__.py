"""Hyperparameter sweeps through Hydra's multirun: grid (basic sweeper) or Optuna, any Hydra launcher."""
