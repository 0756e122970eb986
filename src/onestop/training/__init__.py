"""Training stage: a Lightning module around a transformers causal LM, and the `train` entry point."""
