"""Keys and tokens never reach a file: what onestop writes (config.yaml, recipe.yaml, W&B config) is redacted."""

import os
import re

# Credentials onestop and the libraries under it read from the environment.
SECRET_VARIABLES = (
    "WANDB_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
    "ONESTOP_API_KEY",
)
# Config keys whose value is a credential (`api_key`, `endpoint.api_key`, `hf_token`), not `max_new_tokens`.
_SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|access_token|auth_token|hf_token)$|^token$", re.IGNORECASE)
REDACTED = "<redacted>"


def secret_values() -> list[str]:
    """The credentials set in this environment (long enough to be one, not a placeholder such as `-`)."""
    return [value for name in SECRET_VARIABLES if len(value := os.environ.get(name) or "") >= 8]


def redact(value, key: str = ""):
    """`value` (a config as plain data) with every credential replaced by `<redacted>`: values under a key
    named like one, and any text holding the value of a credential variable of this environment."""
    secrets = secret_values()

    def walk(item, name: str):
        if isinstance(item, dict):
            return {k: walk(v, str(k)) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return type(item)(walk(v, name) for v in item)
        if isinstance(item, str):
            if item and _SECRET_KEY.search(name):
                return REDACTED
            for secret in secrets:
                item = item.replace(secret, REDACTED)
        return item

    return walk(value, key)
