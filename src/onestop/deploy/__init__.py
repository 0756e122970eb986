"""Deployment stage: serve a model behind an OpenAI-compatible HTTP API."""
