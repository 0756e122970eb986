"""Safety and policy: records holding a blocked term are removed or flagged. Off unless listed in data.curate.

Terms come from `terms` and from `blocklist` files (one term a line, `#` starts a comment). A term matches
case-insensitively as a whole word; a term holding CJK characters matches anywhere, as CJK text has no spaces.
`action: flag` keeps the records and lists them in the report, to review before deciding.
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from onestop.data.curate.steps import Excerpt, Step, StepConfigError
from onestop.data.curate.text import full_text, is_cjk, snippet


@dataclass
class Safety(Step):
    name = "safety"

    terms: list[str] = field(default_factory=list)
    """Blocked words or phrases."""
    blocklist: list[str] = field(default_factory=list)
    """Files of blocked terms, one a line; their contents are part of the prepared data's cache key."""
    action: str = "drop"
    """drop: remove the record; flag: keep it and list it in the report."""

    def __post_init__(self):
        if self.action not in ("drop", "flag"):
            raise StepConfigError("action", f"expected drop or flag, got {self.action!r}")
        terms = [t.strip() for t in self.terms if t.strip()]
        for path in self.blocklist:
            if not Path(path).is_file():
                raise StepConfigError("blocklist", f"expected files of terms, one a line; no such file: {path}")
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            terms += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not terms:
            raise StepConfigError("terms", "expected at least one blocked term (terms or a blocklist file)")
        alternatives = [
            re.escape(t) if any(is_cjk(c) for c in t) else rf"(?<!\w){re.escape(t)}(?!\w)"
            for t in sorted(set(terms), key=len, reverse=True)
        ]
        self._pattern = re.compile("|".join(alternatives), re.I)

    def fingerprint(self) -> list[str]:
        return [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in self.blocklist]

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        text = full_text(example)
        match = self._pattern.search(text)
        if match is None:
            return example, "", None

        def excerpt() -> dict:
            return {"term": match.group(), **snippet(text[max(0, match.start() - 60) :])}

        return (None if self.action == "drop" else example), "blocked term", excerpt
