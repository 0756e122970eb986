"""The alpaca record format: instruction / input / output, optionally a system prompt."""

from onestop.core.errors import OnestopError
from onestop.data.records import Record


def alpaca_to_messages(record: Record, system_prompt: str | None = None) -> list[dict]:
    """Chat messages of one alpaca record; `input`, when present, follows the instruction."""
    fields = record.fields
    for key in ("instruction", "output"):
        if key not in fields:
            raise OnestopError(f"{record.where}: missing field '{key}' (alpaca records need instruction and output)")
        if not isinstance(fields[key], str) or not fields[key].strip():
            raise OnestopError(f"{record.where}: field '{key}' must be a non-empty string")
    extra = fields.get("input") or ""
    if not isinstance(extra, str):
        raise OnestopError(f"{record.where}: field 'input' must be a string")
    prompt = f"{fields['instruction']}\n\n{extra}" if extra.strip() else fields["instruction"]
    system = fields.get("system") or system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    return [
        *messages,
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": fields["output"]},
    ]
