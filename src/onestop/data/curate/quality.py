"""Quality heuristics of the Gopher and C4 family (as datatrove and data-juicer implement them).

A record is removed by the first rule it fails, and counted under that rule. The defaults are Gopher's
(Rae et al. 2021, appendix A) except two: instruction data is short, so the length floor is 3 words where
Gopher's web pages need 50, and it holds numbers (arithmetic), so half its words need a letter, not 80%. The
rules Gopher measured on web pages (mean word length, symbols, repetition) judge only records of
`page_rules_min_words` words or more: "2 + 3? 5." has short words and is no spam page.
"""

import re
from collections import Counter
from dataclasses import dataclass, field

from onestop.data.curate.steps import Excerpt, Step, StepConfigError
from onestop.data.curate.text import full_text, is_cjk, snippet, words

# Lines that C4 and datatrove remove as web-page furniture; a user extends them with `boilerplate`.
BOILERPLATE = [
    r"lorem ipsum",
    r"\bjavascript\b",
    r"\bcookies?\b.*\b(policy|use|accept)",
    r"\bprivacy policy\b",
    r"\bterms (of|and) (use|service|conditions)\b",
    r"\ball rights reserved\b",
    r"\b(click|tap) here\b",
    r"\bsubscribe to (our|the) newsletter\b",
    r"\bsign (in|up) to\b",
    r"\bshare (this|on) (facebook|twitter)\b",
]
_SYMBOLS = re.compile(r"#|\.\.\.|…")


@dataclass
class Quality(Step):
    name = "quality"

    min_words: int = 3
    """Fewest words a record may have (Gopher: 50 for web pages); a CJK character counts as a word."""
    max_words: int = 100_000
    """Most words a record may have (Gopher: 100,000)."""
    min_mean_word_length: float = 3.0
    """Shortest mean length, in characters, of the non-CJK words (Gopher: 3)."""
    max_mean_word_length: float = 10.0
    """Longest mean word length (Gopher: 10): above it, hashes, URLs or glued-together words."""
    max_symbol_word_ratio: float = 0.1
    """Most `#` and ellipses per word (Gopher: 0.1)."""
    min_alpha_word_fraction: float = 0.5
    """Fewest words holding a letter, as a fraction: below it, tables of numbers. Gopher's 0.8 suits web pages;
    instruction data with arithmetic holds more numbers."""
    page_rules_min_words: int = 50
    """Records of fewer words skip the rules Gopher made for web pages: word length, symbols, repetition."""
    max_duplicate_line_fraction: float = 0.3
    """Most lines that repeat an earlier line, as a fraction of the lines (Gopher: 0.3)."""
    max_top_ngram_fraction: dict = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    """Words n -> most characters the most frequent n-gram may cover, as a fraction (Gopher's values)."""
    max_duplicate_ngram_fraction: dict = field(default_factory=lambda: {5: 0.15, 6: 0.14, 8: 0.12, 10: 0.10})
    """Words n -> most characters covered by n-grams that occur more than once, as a fraction (Gopher's)."""
    max_boilerplate_line_fraction: float = 0.3
    """Most lines matching a boilerplate pattern (cookie notices, terms of use, "click here"), as a fraction."""
    boilerplate: list[str] = field(default_factory=list)
    """Further boilerplate patterns (regular expressions, case-insensitive), added to the built-in ones."""

    def __post_init__(self):
        for key in ("min_alpha_word_fraction", "max_duplicate_line_fraction", "max_boilerplate_line_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise StepConfigError(key, f"expected a fraction in [0, 1], got {getattr(self, key)}")
        for key in ("max_top_ngram_fraction", "max_duplicate_ngram_fraction"):
            table = getattr(self, key)
            if not isinstance(table, dict) or not all(
                isinstance(n, int) and n > 0 and isinstance(v, int | float) and 0 <= v <= 1 for n, v in table.items()
            ):
                raise StepConfigError(key, f"expected {{words: fraction}}, e.g. {{2: 0.2}}, got {table!r}")
        try:
            self._boilerplate = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE + list(self.boilerplate)), re.I)
        except re.error as err:
            raise StepConfigError("boilerplate", f"expected regular expressions: {err}") from None

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        text = full_text(example)
        reason = self.failed_rule(text)
        return (None, reason, lambda: snippet(text)) if reason else (example, "", None)

    def failed_rule(self, text: str) -> str:
        """The first rule `text` fails, in words for the report; empty when it passes them all."""
        tokens = words(text)
        if len(tokens) < self.min_words:
            return f"fewer than {self.min_words} words"
        if len(tokens) > self.max_words:
            return f"more than {self.max_words} words"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if sum(any(c.isalpha() for c in w) for w in tokens) / len(tokens) < self.min_alpha_word_fraction:
            return f"under {self.min_alpha_word_fraction:.0%} of words with a letter"
        if lines and sum(bool(self._boilerplate.search(line)) for line in lines) / len(lines) > (
            self.max_boilerplate_line_fraction
        ):
            return f"over {self.max_boilerplate_line_fraction:.0%} boilerplate lines"
        if len(tokens) < self.page_rules_min_words:
            return ""
        latin = [w for w in tokens if not is_cjk(w)]
        if latin:
            mean = sum(map(len, latin)) / len(latin)
            if mean < self.min_mean_word_length:
                return f"mean word length below {self.min_mean_word_length:g}"
            if mean > self.max_mean_word_length:
                return f"mean word length above {self.max_mean_word_length:g}"
        if len(_SYMBOLS.findall(text)) / len(tokens) > self.max_symbol_word_ratio:
            return f"more than {self.max_symbol_word_ratio:g} '#' or '...' per word"
        if lines and 1 - len(set(lines)) / len(lines) > self.max_duplicate_line_fraction:
            return f"over {self.max_duplicate_line_fraction:.0%} repeated lines"
        lowered = [w.lower() for w in tokens]
        letters = sum(map(len, lowered))
        for n, limit in sorted(self.max_top_ngram_fraction.items()):
            grams = Counter(zip(*(lowered[i:] for i in range(n)), strict=False))
            if grams:
                gram, count = grams.most_common(1)[0]
                if count > 1 and count * sum(map(len, gram)) / letters > limit:
                    return f"most frequent {n}-gram covers over {limit:.0%} of the text"
        for n, limit in sorted(self.max_duplicate_ngram_fraction.items()):
            if _duplicate_ngram_fraction(lowered, n, letters) > limit:
                return f"repeated {n}-grams cover over {limit:.0%} of the text"
        return ""


def _duplicate_ngram_fraction(tokens: list[str], n: int, letters: int) -> float:
    """Characters of the words inside n-grams that occur more than once, over all characters (Gopher)."""
    grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))
    counts = Counter(grams)
    covered = [False] * len(tokens)
    for start, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[start : start + n] = [True] * n
    return sum(len(w) for w, hit in zip(tokens, covered, strict=True) if hit) / max(letters, 1)
