"""Safety and policy: records holding a blocked term, or judged unsafe by a served model, are removed or flagged.

Off unless listed in data.curate. Terms come from `terms` and from `blocklist` files (one term a line, `#`
starts a comment). A term matches case-insensitively as a whole word; a term holding CJK characters matches
anywhere, as CJK text has no spaces. With `endpoint` (any OpenAI-compatible server: `invoke deploy`, vLLM,
a hosted API) each record the blocklist lets through is sent to `model` with a moderation prompt naming
`policy`; an answer starting with "unsafe" removes or flags it, and an answer that is neither "safe" nor
"unsafe" flags it for review. `action: flag` keeps the records and lists them in the report.
"""

# Lazy imports: openai (only with an endpoint).

import hashlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from onestop.core.errors import OnestopError
from onestop.data.curate.steps import CHUNK, Excerpt, Judgement, Step, StepConfigError
from onestop.data.curate.text import full_text, is_cjk, snippet

MODERATION_PROMPT = (
    "You review training data for a language model. Policy: the data must not contain {policy}.\n"
    "Answer with one word, safe or unsafe, for the text below.\n\n<text>\n{text}\n</text>"
)
# Characters of a record sent to the classifier: enough to judge, bounded cost per record.
CLASSIFIED_CHARS = 4000


@dataclass
class Safety(Step):
    name = "safety"

    terms: list[str] = field(default_factory=list)
    """Blocked words or phrases."""
    blocklist: list[str] = field(default_factory=list)
    """Files of blocked terms, one a line; their contents are part of the prepared data's cache key."""
    action: str = "drop"
    """drop: remove the record; flag: keep it and list it in the report."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible server whose model judges each record (http://localhost:8000/v1)."""
    model: str | None = None
    """The served model's name, with endpoint."""
    policy: str = (
        "violence or threats, hate speech, sexual content involving minors, self-harm instructions, or malware"
    )
    """What the data must not contain, put into the moderation prompt."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (unset: none sent)."""
    concurrency: int = 8
    """Records judged at once by the endpoint."""

    def __post_init__(self):
        if self.action not in ("drop", "flag"):
            raise StepConfigError("action", f"expected drop or flag, got {self.action!r}")
        terms = [t.strip() for t in self.terms if t.strip()]
        for path in self.blocklist:
            if not Path(path).is_file():
                raise StepConfigError("blocklist", f"expected files of terms, one a line; no such file: {path}")
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            terms += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not terms and not self.endpoint:
            raise StepConfigError("terms", "expected a blocked term (terms or a blocklist file) or an endpoint")
        if self.endpoint and not self.model:
            raise StepConfigError("model", f"expected the name of the model served at {self.endpoint}")
        if self.concurrency < 1:
            raise StepConfigError("concurrency", f"expected a positive number, got {self.concurrency}")
        alternatives = [
            re.escape(t) if any(is_cjk(c) for c in t) else rf"(?<!\w){re.escape(t)}(?!\w)"
            for t in sorted(set(terms), key=len, reverse=True)
        ]
        self._pattern = re.compile("|".join(alternatives), re.I) if alternatives else None

    def fingerprint(self) -> list[str]:
        return [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in self.blocklist]

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        text = full_text(example)
        match = self._pattern.search(text) if self._pattern else None
        if match is None:
            return example, "", None

        def excerpt() -> dict:
            return {"term": match.group(), **snippet(text, at=match.start())}

        return (None if self.action == "drop" else example), "blocked term", excerpt

    def judge_all(self, examples: list[dict], processes: int = 1) -> Iterator[Judgement]:
        """The blocklist as every step's judgement; then, with an endpoint, the served model on what passed."""
        if not self.endpoint:
            yield from super().judge_all(examples, processes)
            return
        from openai import OpenAI

        client = OpenAI(base_url=self.endpoint, api_key=os.environ.get(self.api_key_env) or "-", max_retries=2)
        with ThreadPoolExecutor(self.concurrency) as pool:
            for start in range(0, len(examples), CHUNK):
                chunk = examples[start : start + CHUNK]
                judged = list(super().judge_all(chunk))
                passed = [i for i, judgement in enumerate(judged) if judgement[1] == "kept"]
                answers = pool.map(partial(self.classify, client), [full_text(chunk[i]) for i in passed])
                for i, answer in zip(passed, answers, strict=True):
                    judged[i] = self._verdict(chunk[i], answer)
                yield from judged

    def classify(self, client, text: str) -> str:
        """The served model's one-word answer for `text`, lower-cased."""
        prompt = MODERATION_PROMPT.format(policy=self.policy, text=text[:CLASSIFIED_CHARS])
        try:
            reply = client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0
            )
        except Exception as err:  # the client's errors differ by cause (connection, status, timeout): one line
            raise OnestopError(
                f"data.curate safety: the endpoint {self.endpoint} did not answer ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        return (reply.choices[0].message.content or "").strip().lower()

    def _verdict(self, example: dict, answer: str) -> Judgement:
        excerpt = {"answer": answer, **snippet(full_text(example))}
        if answer.startswith("unsafe"):
            return None, "removed" if self.action == "drop" else "flagged", f"judged unsafe by {self.model}", excerpt
        if answer.startswith("safe"):
            return None, "kept", "", None
        return None, "flagged", f"unclear answer from {self.model}", excerpt
