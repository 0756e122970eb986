"""Data stage: read records of any format, normalise, validate, tokenize with loss masks, cache, batch.

Import what you need from its modules (`onestop.data.prepare`, `onestop.data.sft`, ...): the package
itself loads nothing, so light callers do not pay for torch and Lightning.
"""
