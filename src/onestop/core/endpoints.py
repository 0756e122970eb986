"""Asking an OpenAI-compatible endpoint which models it serves (evaluation and the agent both need to)."""

import json
import urllib.error
import urllib.request

from onestop.core.errors import OnestopError


def listed_models(base_url: str, headers: dict, url_key: str) -> list[str] | None:
    """The models `base_url`/models lists; None when the server has no /models to ask. An endpoint that cannot
    be reached, or answers with an error, fails naming the config key that set its URL."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return [m["id"] for m in json.load(reply).get("data", [])]
    except urllib.error.HTTPError as err:
        if err.code in (404, 405):
            return None
        raise OnestopError(f"{url_key}={base_url}: /models answered HTTP {err.code} ({err.reason})") from None
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or str(err.reason)
        raise OnestopError(f"{url_key}={base_url}: cannot be reached ({reason}); is the server up?") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise OnestopError(f"{url_key}={base_url}: /models did not answer ({err}); is the server up?") from None


def only_listed_model(base_url: str, headers: dict, url_key: str, model_key: str) -> str:
    """The one model `base_url`/models lists; errors name the config keys that set the URL and the model."""
    names = listed_models(base_url, headers, url_key)
    if names is None:
        raise OnestopError(f"{model_key}: {base_url} does not list its models (no /models); name one with {model_key}=")
    if len(names) != 1:
        raise OnestopError(f"{model_key}: the endpoint serves {names or 'no models'}; name one with {model_key}=")
    return names[0]


def check_served_model(base_url: str, headers: dict, model: str, url_key: str, model_key: str) -> None:
    """`model` is one the endpoint lists, checked before any request is sent: a wrong name would otherwise
    surface as an HTTP 404 in the middle of an evaluation. A server without /models is taken at its word."""
    names = listed_models(base_url, headers, url_key)
    if names and model not in names:
        raise OnestopError(f"{model_key}={model}: {base_url} does not serve it; it serves {', '.join(names)}")
