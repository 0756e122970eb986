"""Text repair: mojibake and other encoding damage (ftfy), control characters, stray whitespace.

A repaired record is kept and counted as changed. Indentation and single blank lines are kept (code and
lists need them); what goes is trailing spaces, runs of more than one blank line, and leading or trailing
blank space of the whole text. ftfy runs without the fixes that change intended characters: curly quotes,
full-width characters (Chinese punctuation) and ligatures stay as written.
"""

import re
from dataclasses import dataclass
from importlib.metadata import version

import ftfy

from onestop.data.curate.steps import Excerpt, Step
from onestop.data.curate.text import full_text, map_texts, snippet

# C0 and C1 controls except tab and newline, plus zero-width spaces and the byte-order mark.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass
class Repair(Step):
    name = "repair"

    encoding: bool = True
    """Fix mojibake (UTF-8 read as Latin-1 and the like) and HTML entities with ftfy."""
    control: bool = True
    """Remove control characters (but tab and newline), zero-width spaces and byte-order marks; \\r\\n -> \\n."""
    whitespace: bool = True
    """Strip trailing spaces of lines and of the text, and squeeze runs of blank lines to one."""

    def fingerprint(self) -> list[str]:
        return [f"ftfy {version('ftfy')}"] if self.encoding else []

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        repaired = map_texts(example, self.repair)
        if repaired is example:
            return example, "", None
        return repaired, self._what(example), lambda: snippet(full_text(example), full_text(repaired))

    def repair(self, text: str) -> str:
        if self.encoding:
            text = _fix_encoding(text)
        if self.control:
            text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        if self.whitespace:
            text = _BLANK_RUNS.sub("\n\n", _TRAILING.sub("", text)).strip()
        return text

    def _what(self, example: dict) -> str:
        """Which repair changed the record first: encoding, control characters or whitespace."""
        for label, only in (("encoding", Repair(True, False, False)), ("control", Repair(False, True, False))):
            if getattr(self, label) and map_texts(example, only.repair) is not example:
                return label if label == "encoding" else "control characters"
        return "whitespace"


# ftfy's fixes but those that change characters written on purpose.
FTFY_CONFIG = ftfy.TextFixerConfig(
    uncurl_quotes=False,
    fix_character_width=False,
    fix_latin_ligatures=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)


def _fix_encoding(text: str) -> str:
    return ftfy.fix_text(text, FTFY_CONFIG)
