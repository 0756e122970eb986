"""Chat templates onestop ships: for models whose tokenizer has none (base models), and one per zoo family's
format, written after the family's published template so that every conversation renders prefix by prefix."""

from pathlib import Path

from onestop.core.errors import OnestopError

_DIR = Path(__file__).parent


def bundled_template(name: str) -> str:
    """Text of a bundled Jinja chat template, e.g. `chatml`, `gemma`, `llama3` (one per `*.jinja` here)."""
    path = _DIR / f"{name}.jinja"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in _DIR.glob("*.jinja")))
        raise OnestopError(f"config key 'model.chat_template': unknown template {name!r}; bundled: {names}")
    return path.read_text()
