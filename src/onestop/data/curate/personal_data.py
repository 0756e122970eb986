"""Personal data: e-mail addresses, phone numbers, IP addresses, card and ID numbers, masked or dropped.

`action: mask` (the default) replaces each match with its kind in brackets (`[EMAIL]`) and keeps the record,
counted as changed; `action: drop` removes the record. The report's excerpts show the masked text either
way. A card number must pass the Luhn check, so order numbers and ISBNs of the same length are left alone.
`patterns` adds kinds of your own: {EMPLOYEE_ID: 'EMP-\\d{6}'} masks them as `[EMPLOYEE_ID]`.
"""

import re
from dataclasses import dataclass, field

from onestop.data.curate.steps import Excerpt, Step, StepConfigError
from onestop.data.curate.text import full_text, map_texts, snippet

# Kind -> pattern, in the order they are applied: an ID or card number is masked before a phone number could
# claim its digits, an IP address before a dotted phone number. A phone number needs 9 to 15 digits.
PATTERNS = {
    "email": r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])",
    "ip": r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w.]*\d)"
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])",
    # US social security numbers; Chinese resident identity numbers (18 characters, the last may be X)
    "id": r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"
    r"|(?<!\w)[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])\d{2}\d{3}[\dXx](?!\w)",
    "credit_card": r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])",
    # +country code or (area code), three groups of digits split by spaces, dots or dashes (not part of a longer
    # run of groups); Chinese mobile numbers
    "phone": r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}"
    r"(?![\w-]|[ .-]\d)"
    r"|(?<!\d)1[3-9]\d{9}(?!\d)",
}

_MASK = re.compile(r"\[[A-Z0-9_]+\]")


def luhn_ok(number: str) -> bool:
    """Whether a card number's digits pass the Luhn checksum."""
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


@dataclass
class PersonalData(Step):
    name = "personal_data"

    action: str = "mask"
    """mask: replace each match with [KIND] and keep the record; drop: remove the record."""
    kinds: list[str] = field(default_factory=lambda: list(PATTERNS))
    """Built-in kinds to look for: email, ip, credit_card, id, phone."""
    patterns: dict[str, str] = field(default_factory=dict)
    """Further kinds: name -> regular expression, masked as [NAME]; applied before the built-in ones."""

    def __post_init__(self):
        if self.action not in ("mask", "drop"):
            raise StepConfigError("action", f"expected mask or drop, got {self.action!r}")
        unknown = [kind for kind in self.kinds if kind not in PATTERNS]
        if unknown:
            raise StepConfigError("kinds", f"unknown kind {unknown[0]!r}; expected some of {', '.join(PATTERNS)}")
        self._patterns = []
        for kind, pattern in {**self.patterns, **{k: PATTERNS[k] for k in self.kinds}}.items():
            try:
                self._patterns.append((kind, re.compile(pattern)))
            except re.error as err:
                raise StepConfigError(f"patterns.{kind}", f"expected a regular expression: {err}") from None

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        found: list[str] = []
        masked = map_texts(example, lambda text: self.mask(text, found))
        if masked is example:
            return example, "", None
        kinds = ", ".join(sorted(set(found)))

        def excerpt() -> dict:  # the masked text only: the report is saved with the run, and must not leak
            text = full_text(masked)
            first = _MASK.search(text)
            return snippet(text, at=first.start() if first else 0)

        return (None, f"holds {kinds}", excerpt) if self.action == "drop" else (masked, f"masked {kinds}", excerpt)

    def mask(self, text: str, found: list[str] | None = None) -> str:
        """`text` with every match masked as [KIND]; the kinds found are appended to `found`."""
        for kind, pattern in self._patterns:

            def replace(match: re.Match, kind=kind) -> str:
                if kind == "credit_card" and not luhn_ok(match.group()):
                    return match.group()
                if kind == "phone" and not 9 <= sum(c.isdigit() for c in match.group()) <= 15:
                    return match.group()
                if found is not None:
                    found.append(kind)
                return f"[{kind.upper()}]"

            text = pattern.sub(replace, text)
        return text
