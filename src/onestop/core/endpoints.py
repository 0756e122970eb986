"""Asking an OpenAI-compatible endpoint which model it serves (evaluation and the agent both need to)."""

import json
import urllib.request

from onestop.core.errors import OnestopError


def only_listed_model(base_url: str, headers: dict, url_key: str, model_key: str) -> str:
    """The one model `base_url`/models lists; errors name the config keys that set the URL and the model."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            names = [m["id"] for m in json.load(reply).get("data", [])]
    except (OSError, ValueError) as err:
        raise OnestopError(f"{url_key}={base_url}: /models did not answer ({err}); is the server up?") from None
    if len(names) != 1:
        raise OnestopError(f"{model_key}: the endpoint serves {names or 'no models'}; name one with {model_key}=")
    return names[0]
