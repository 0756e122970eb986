"""Config composition: Hydra groups under conf/, checked against the schemas in `schema`.

Import `onestop.config.compose` for composition (pulls in Hydra) and `onestop.config.groups` for the
cheap listing used by `--help`.
"""
