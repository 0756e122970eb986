"""Choosing a model and settings before anything loads: architecture facts, memory and time estimates."""
