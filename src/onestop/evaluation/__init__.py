"""Evaluation stage: held-out loss, generated answers and their scores."""
