"""onestop: one tool that carries a language model from data through fine-tuning, evaluation and serving."""

__version__ = "0.1.0"
