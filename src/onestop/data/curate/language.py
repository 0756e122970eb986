"""Language: keep records written in the listed languages, detected offline with lingua.

lingua (lingua-language-detector) ships its models in the wheel, so detection needs no network. The
detector chooses among `candidates` and the kept languages: every language it knows would take it about ten
seconds to load and more memory, and a language it is not offered is reported as the nearest one offered.
A record too short to tell (a number, one word) is kept or removed by `keep_undetected`.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version

from lingua import IsoCode639_1, LanguageDetectorBuilder

from onestop.data.curate.steps import Excerpt, Judgement, Step, StepConfigError
from onestop.data.curate.text import full_text, snippet

# Records whose languages are detected in one call (in lingua's own threads).
DETECT_CHUNK = 1000
# Widely written languages the detector tells apart besides the kept ones (ISO 639-1).
CANDIDATES = ["en", "zh", "es", "fr", "de", "pt", "ru", "ja", "ko", "ar", "it", "nl", "tr", "vi", "hi", "id", "pl"]


@dataclass
class Language(Step):
    name = "language"

    languages: list[str]
    """Languages to keep, as ISO 639-1 codes: [en, zh]."""
    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))
    """Languages the detector chooses among, besides `languages`."""
    keep_undetected: bool = True
    """Keep a record whose language cannot be told (digits, symbols, a word or two)."""

    def __post_init__(self):
        if not self.languages:
            raise StepConfigError("languages", "expected a list of ISO 639-1 codes, e.g. [en,zh]")
        codes = {}
        for key in ("languages", "candidates"):
            for code in getattr(self, key):
                try:
                    codes[code.lower()] = IsoCode639_1.from_str(code.lower())
                except ValueError:
                    raise StepConfigError(key, f"expected ISO 639-1 codes such as en, zh; got {code!r}") from None
        self._codes = list(codes.values())
        self._keep = {code.lower() for code in self.languages}
        self._detector = None

    def fingerprint(self) -> list[str]:
        return [f"lingua {version('lingua-language-detector')}"]

    def judge_all(self, examples: list[dict], processes: int = 1) -> Iterator[Judgement]:
        """As every step's, but a chunk's languages detected in one call, spread over lingua's own threads."""
        for start in range(0, len(examples), DETECT_CHUNK):
            chunk = examples[start : start + DETECT_CHUNK]
            for example, detected in zip(chunk, self.detect_all([full_text(e) for e in chunk]), strict=True):
                new, reason, excerpt = self.judge(example, detected)
                yield None, "removed" if new is None else "kept", reason, excerpt and excerpt()

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        return self.judge(example, self.detect_all([full_text(example)])[0])

    def judge(self, example: dict, detected: str | None) -> tuple[dict | None, str, Excerpt | None]:
        text = full_text(example)
        if detected is None:
            return (example, "", None) if self.keep_undetected else (None, "language undetected", lambda: snippet(text))
        if detected in self._keep:
            return example, "", None
        return None, f"language {detected}", lambda: snippet(text)

    def detect_all(self, texts: list[str]) -> list[str | None]:
        """The ISO 639-1 code of each text's language, or None where it cannot be told."""
        if self._detector is None:
            self._detector = LanguageDetectorBuilder.from_iso_codes_639_1(*self._codes).build()
        languages = self._detector.detect_languages_in_parallel_of(texts)
        return [None if language is None else language.iso_code_639_1.name.lower() for language in languages]
