"""Config composition: Hydra groups under conf/, checked against the schemas in `schema`."""

from onestop.config.compose import ConfigError, compose, list_group_options

__all__ = ["ConfigError", "compose", "list_group_options"]
