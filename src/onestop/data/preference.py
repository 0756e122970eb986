"""The web UI's ratings (`feedback.jsonl`, written by onestop.deploy.feedback) as answers rated desirable or not.

    invoke train stage=kto data=feedback data.path=~/.cache/onestop/feedback/my-run/feedback.jsonl

The file is read as the UI writes it: one rating per line, a later rating of the same reply replacing the
earlier one. Each latest rating gives the rated reply (desirable if rated good, undesirable if rated bad) and,
when the user wrote a correction, the correction as a desirable answer after the same conversation. They are
written once to an `unpaired` file in the cache, which the data stage then reads like any other.
"""

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.files import write_text_atomic
from onestop.core.paths import cache_dir


def rated_from_feedback(entries: list[dict]) -> list[dict]:
    """`unpaired` records (a conversation ending with the rated answer, and `label`) of the latest ratings."""
    records = []
    for entry in entries:
        reply, extra = entry["reply"], ({"tools": entry["tools"]} if entry.get("tools") else {})
        if (reply.get("content") or "").strip() or reply.get("tool_calls"):
            records.append({"messages": [*entry["messages"], reply], "label": entry["rating"] == "good", **extra})
        if entry.get("correction"):
            answer = {"role": "assistant", "content": entry["correction"]}
            records.append({"messages": [*entry["messages"], answer], "label": True, **extra})
    return records


def latest_ratings(path: Path) -> list[dict]:
    """The latest rating of each reply in a feedback file, oldest first; a malformed line names file:line."""
    latest: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise OnestopError(f"{path}:{number}: not valid JSON; remove or mend that line") from None
        missing = [
            key for key in ("id", "rating", "messages", "reply") if not isinstance(entry, dict) or key not in entry
        ]
        if missing or entry["rating"] not in ("good", "bad"):
            raise OnestopError(
                f"{path}:{number}: not a rating of the web UI's feedback file (expected id, rating good/bad, messages, "
                f"reply{'; missing ' + ', '.join(missing) if missing else ''}); data=feedback reads feedback.jsonl"
            )
        latest.pop(entry["id"], None)
        latest[entry["id"]] = entry
    return list(latest.values())


def feedback_as_unpaired(data_cfg: DictConfig) -> DictConfig:
    """`data_cfg` as the data stage reads it: for data.format=feedback, the same node pointing at an `unpaired`
    file made from the ratings (in the cache, named by their content); any other format unchanged."""
    if data_cfg.format != "feedback":
        return data_cfg
    paths = {}
    for key in ("path", "val_path"):
        source = data_cfg.get(key)
        if source is None:
            continue
        file = Path(source).expanduser()
        if not file.is_file():
            raise OnestopError(
                f"config key 'data.{key}': {source}: no such feedback file (the UI writes feedback.jsonl)"
            )
        records = rated_from_feedback(latest_ratings(file))
        if not records:
            raise OnestopError(f"config key 'data.{key}': {source}: no rated reply in it yet")
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        target = cache_dir() / "feedback-rated" / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.jsonl"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, text)
        desirable = sum(record["label"] for record in records)
        print(
            f"data.{key}={source}: {desirable} desirable and {len(records) - desirable} undesirable answers "
            f"from the latest ratings, read as data.format=unpaired from {target}",
            flush=True,
        )
        paths[key] = str(target)
    return OmegaConf.merge(data_cfg, {"format": "unpaired", **paths})
