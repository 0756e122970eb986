"""Ratings of a deployment's replies, and the training data they make.

    store = FeedbackStore.for_deployment("my-run")
    store.rate(reply_id, messages, reply, "bad", correction="Paris.")
    store.paths()   # {"feedback": ..., "messages": ..., "preference": ...}

Each rating is appended to `feedback.jsonl` (a later rating of the same reply replaces the earlier one),
then two datasets are rewritten whole from it:

- `messages.jsonl` (`invoke train data=messages data.path=FILE`): the conversation ending with the reply
  rated good, or with the corrected answer in place of the reply.
- `preference.jsonl` (`invoke train stage=dpo data=preference data.path=FILE`): the corrected answer
  chosen over the reply rated bad, after the same prompt.
"""

import json
import threading
import time
from pathlib import Path

from onestop.core.errors import OnestopError
from onestop.core.files import write_text_atomic
from onestop.core.paths import cache_dir
from onestop.core.secrets import redact
from onestop.data.preference import latest_ratings
from onestop.deploy.conversations import append_line, is_answer, reply_message, request_messages

RATINGS = ("good", "bad")
_LOCK = threading.Lock()


def feedback_root() -> Path:
    return cache_dir() / "feedback"


class FeedbackStore:
    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    @classmethod
    def for_deployment(cls, name: str, root: Path | str | None = None) -> "FeedbackStore":
        if not name or "/" in name or name.startswith("."):
            raise OnestopError(f"deployment name {name!r}: expected a plain name (see invoke deploy.status)")
        return cls(Path(root or feedback_root()) / name)

    def paths(self) -> dict[str, Path]:
        return {kind: self.directory / f"{kind}.jsonl" for kind in ("feedback", "messages", "preference")}

    def rate(
        self,
        reply_id: str,
        messages: list[dict],
        reply: dict,
        rating: str,
        correction: str | None = None,
        tools: list[dict] | None = None,
    ) -> dict[str, int]:
        """Record a rating of `reply` (the assistant's answer to `messages`); returns the datasets' sizes."""
        if rating not in RATINGS:
            raise OnestopError(f"rating={rating!r}: expected good or bad")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise OnestopError("messages: expected the conversation the reply answered, a non-empty list")
        if not reply_id:
            raise OnestopError("reply_id: expected the id of the rated reply")
        entry = {
            "id": str(reply_id),
            "time": time.time(),
            "rating": rating,
            "correction": (correction or "").strip() or None,
            "messages": request_messages(messages),
            "reply": reply_message(reply),
        }
        if tools:
            entry["tools"] = tools
        with _LOCK:
            self.directory.mkdir(parents=True, exist_ok=True)
            append_line(self.paths()["feedback"], json.dumps(redact(entry), ensure_ascii=False), threading.Lock())
            return self.write_datasets()

    def entries(self) -> list[dict]:
        """The latest rating of each reply, oldest first."""
        path = self.paths()["feedback"]
        return latest_ratings(path) if path.is_file() else []

    def write_datasets(self) -> dict[str, int]:
        conversations, pairs = [], []
        for entry in self.entries():
            record = training_record(entry)
            if record:
                conversations.append(record)
            pair = preference_pair(entry)
            if pair:
                pairs.append(pair)
        paths = self.paths()
        for kind, rows in (("messages", conversations), ("preference", pairs)):
            write_text_atomic(paths[kind], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return {"messages": len(conversations), "preference": len(pairs)}


def training_record(entry: dict) -> dict | None:
    """A conversation to train on: a reply rated good, or the correction in its place."""
    if entry.get("correction"):
        answer = {"role": "assistant", "content": entry["correction"]}
    elif entry["rating"] == "good" and is_answer(entry["reply"]):
        answer = entry["reply"]
    else:
        return None
    record = {"messages": [*entry["messages"], answer]}
    if entry.get("tools"):
        record["tools"] = entry["tools"]
    return record


def preference_pair(entry: dict) -> dict | None:
    """The correction chosen over a reply rated bad, when the prompt ends with the user and the reply said something."""
    correction, rejected = entry.get("correction"), entry["reply"].get("content", "").strip()
    if entry["rating"] != "bad" or not correction or not rejected or correction == rejected:
        return None
    if entry["messages"][-1]["role"] != "user":
        return None  # DPO prompts end with the user's turn
    return {"prompt": entry["messages"], "chosen": correction, "rejected": entry["reply"]["content"]}
