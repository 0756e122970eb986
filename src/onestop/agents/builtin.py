"""The tools onestop ships: plain typed functions whose docstrings are what the model reads.

Each is selected by a file of `conf/tools/`, which binds its settings (a documents folder, an allow-list) so
that the model fills in only the rest. Errors a model can cause raise ValueError with a message it can act on;
`run_tool_call` hands that message back to it.
"""

import ast
import math
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import bm25s
import numpy as np

# calculator
MAX_EXPRESSION_CHARS = 500
MAX_MAGNITUDE = 1e100  # far beyond any everyday quantity, far below what would take long to compute
MAX_EXPONENT = 1000
CALCULATOR_FUNCTIONS = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
}
CALCULATOR_CONSTANTS = {"pi": math.pi, "e": math.e}
BINARY_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}

# current_datetime: English names whatever the process's locale, so generated data matches the tool
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# convert_units: unit -> (dimension, factor to the dimension's base unit); temperatures convert through kelvin
UNITS = {
    "km": ("length", 1000.0),
    "m": ("length", 1.0),
    "cm": ("length", 0.01),
    "mm": ("length", 0.001),
    "mi": ("length", 1609.344),
    "yd": ("length", 0.9144),
    "ft": ("length", 0.3048),
    "in": ("length", 0.0254),
    "kg": ("mass", 1.0),
    "g": ("mass", 0.001),
    "mg": ("mass", 1e-6),
    "t": ("mass", 1000.0),
    "lb": ("mass", 0.45359237),
    "oz": ("mass", 0.028349523125),
    "°C": ("temperature", None),
    "°F": ("temperature", None),
    "K": ("temperature", None),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
    "day": ("time", 86400.0),
    "week": ("time", 604800.0),
}
UNIT_SPELLINGS = {
    "km": ["kilometer", "kilometers", "kilometre", "kilometres", "kms"],
    "m": ["meter", "meters", "metre", "metres"],
    "cm": ["centimeter", "centimeters", "centimetre", "centimetres"],
    "mm": ["millimeter", "millimeters", "millimetre", "millimetres"],
    "mi": ["mile", "miles"],
    "yd": ["yard", "yards", "yds"],
    "ft": ["foot", "feet"],
    "in": ["inch", "inches"],
    "kg": ["kilogram", "kilograms", "kilo", "kilos", "kgs"],
    "g": ["gram", "grams", "gramme", "grammes"],
    "mg": ["milligram", "milligrams"],
    "t": ["tonne", "tonnes", "metric ton", "metric tons"],
    "lb": ["pound", "pounds", "lbs"],
    "oz": ["ounce", "ounces"],
    "°C": ["c", "celsius", "degc", "deg c", "degrees celsius", "centigrade"],
    "°F": ["f", "fahrenheit", "degf", "deg f", "degrees fahrenheit"],
    "K": ["k", "kelvin", "kelvins"],
    "s": ["sec", "secs", "second", "seconds"],
    "min": ["mins", "minute", "minutes"],
    "h": ["hr", "hrs", "hour", "hours"],
    "day": ["d", "days"],
    "week": ["wk", "wks", "weeks"],
}
UNIT_ALIASES = {spelling: unit for unit, spellings in UNIT_SPELLINGS.items() for spelling in [unit.lower(), *spellings]}

# search_documents
TEXT_SUFFIXES = {".md", ".txt", ".rst", ".py", ".yaml", ".yml", ".json", ".csv", ".html"}
MAX_PASSAGE_LINES = 12  # a paragraph, or a screenful of a long one: enough context to cite, short enough to read
MAX_PASSAGE_CHARS = 1200
MAX_FILE_BYTES = 2_000_000  # a bigger "text" file is a dump or a log, not a document to cite
MAX_TOP_K = 20

# http_get
MAX_REDIRECTS = 5
REDIRECT_CODES = {301, 302, 303, 307, 308}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Supports numbers, + - * / // % ** (power), parentheses, the functions sqrt, abs, round, min, max, floor and
    ceil, and the constants pi and e.

    Args:
        expression: The expression, e.g. "17 * 23" or "sqrt(2) / 2".

    Returns:
        The value: integers without a decimal point, other numbers to at most 10 significant digits.

    Raises:
        ValueError: The expression uses anything else (names, attributes, strings, ...), is longer than 500
            characters, divides by zero, or goes beyond 1e100 or a power of 1000.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression too long ({len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from exc
    return _format_number(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id not in CALCULATOR_CONSTANTS:
            raise ValueError(f"unknown name '{node.id}'; the constants are {', '.join(CALCULATOR_CONSTANTS)}")
        return CALCULATOR_CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _evaluate(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(BINARY_OPERATORS[type(node.op)](left, right))
        except ZeroDivisionError as exc:
            raise ValueError("division by zero") from exc
        except OverflowError as exc:
            raise ValueError("result too large (the limit is 1e100)") from exc
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise ValueError(f"{_describe_node(node.func)} is not allowed in an arithmetic expression")
        name = node.func.id
        if name not in CALCULATOR_FUNCTIONS:
            raise ValueError(f"function '{name}' is not allowed; the functions are {', '.join(CALCULATOR_FUNCTIONS)}")
        if node.keywords:
            raise ValueError(f"{name}() takes no keyword arguments")
        arguments = [_evaluate(argument) for argument in node.args]
        try:
            return _checked(CALCULATOR_FUNCTIONS[name](*arguments))
        except (TypeError, ValueError) as exc:
            shown = ", ".join(map(_format_number, arguments)) or "no arguments"
            raise ValueError(f"{name}() cannot take {shown}: {exc}") from exc
    raise ValueError(f"{_describe_node(node)} is not allowed in an arithmetic expression")


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent {_format_number(exponent)} too large (the limit is {MAX_EXPONENT})")
    # refuse before computing: an integer power of 1e100 ** 1000 would be slow to build only to be refused
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ValueError("result too large (the limit is 1e100)")


def _checked(value: int | float) -> int | float:
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("the result is not a number")
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError("result too large (the limit is 1e100)")
    return value


def _describe_node(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access ('.{node.attr}')"
    names = {ast.Compare: "comparison", ast.BoolOp: "and/or", ast.Subscript: "indexing", ast.Lambda: "lambda"}
    return names.get(type(node), type(node).__name__)


def _format_number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def current_datetime(timezone: str = "UTC") -> str:
    """Current date and time in a time zone.

    Args:
        timezone: An IANA time zone name such as "Europe/Paris", "America/New_York" or "UTC".

    Returns:
        The date, time and weekday, e.g. "2026-12-02 14:05 (Wednesday) UTC".

    Raises:
        ValueError: The time zone is unknown.
    """
    return format_datetime(datetime.now(UTC), timezone)


def format_datetime(moment: datetime, timezone: str) -> str:
    """`moment` in `timezone`, written exactly as `current_datetime` writes the present.

    Args:
        moment: The time; a naive datetime is taken as UTC.
        timezone: An IANA time zone name.

    Returns:
        E.g. "2026-12-02 14:05 (Wednesday) UTC".

    Raises:
        ValueError: The time zone is unknown.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris' or 'UTC'") from exc
    local = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} ({WEEKDAYS[local.weekday()]}) {timezone}"


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a value between units of length, mass, temperature or time.

    Args:
        value: The amount to convert.
        from_unit: Its unit, e.g. "km", "miles", "lb", "C", "F", "K", "h", "days".
        to_unit: The unit wanted, of the same kind.

    Returns:
        E.g. "5 km = 3.107 mi" (4 significant digits).

    Raises:
        ValueError: A unit is unknown, the units measure different things, or a temperature is below
            absolute zero.
    """
    source, target = _unit(from_unit), _unit(to_unit)
    dimension, target_dimension = UNITS[source][0], UNITS[target][0]
    if dimension != target_dimension:
        raise ValueError(f"cannot convert {dimension} ({source}) to {target_dimension} ({target})")
    if dimension == "temperature":
        kelvin = {"K": value, "°C": value + 273.15, "°F": (value - 32) * 5 / 9 + 273.15}[source]
        if kelvin < -1e-9:
            raise ValueError(f"{_format_number(value)} {source} is below absolute zero")
        result = {"K": kelvin, "°C": kelvin - 273.15, "°F": (kelvin - 273.15) * 9 / 5 + 32}[target]
    else:
        result = value * UNITS[source][1] / UNITS[target][1]
    return f"{_format_number(value)} {source} = {_significant(result, 4)} {target}"


def _unit(spelling: str) -> str:
    unit = UNIT_ALIASES.get(" ".join(spelling.replace("°", "").lower().split()))
    if unit is None:
        unit = UNIT_ALIASES.get(spelling.strip().lower())
    if unit is None:
        raise ValueError(f"unknown unit {spelling!r}; known units: {', '.join(UNITS)}")
    return unit


def _significant(value: float, digits: int) -> str:
    """`value` to `digits` significant digits, without an exponent for everyday magnitudes."""
    if value == 0 or not math.isfinite(value):
        return _format_number(float(value))
    if not 1e-6 <= abs(value) < 1e15:
        return f"{value:.{digits}g}"
    rounded = round(value, digits - 1 - math.floor(math.log10(abs(value))))
    return _format_number(float(rounded))


@dataclass
class Passage:
    """A paragraph of a document: where it starts, and its text."""

    path: str
    line: int
    text: str


@dataclass
class DocumentIndex:
    """The BM25 index of one folder's text files, and what was left out of it."""

    folder: Path
    passages: list[Passage]
    retriever: bm25s.BM25 | None
    files: int
    skipped_not_utf8: int
    skipped_outside: int  # links that lead outside the folder, or nowhere
    skipped_too_large: int
    signature: tuple


_INDEXES: dict[Path, DocumentIndex] = {}
_INDEX_LOCK = threading.Lock()


def search_documents(query: str, folder: str, top_k: int = 3) -> str:
    """Search the user's documents and return the best passages with file and line.

    Args:
        query: Words to look for, e.g. "refund policy for damaged items".
        folder: The documents folder (set by the configuration).
        top_k: How many passages to return, 1 to 20.

    Returns:
        Up to `top_k` passages as "path:LINE: text" blocks separated by blank lines, best first, or a line
        saying that no passage matches.

    Raises:
        ValueError: The folder is not a directory, or top_k is out of range.
    """
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, not {top_k}")
    index = document_index(folder)
    tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
    if index.retriever is None or not tokens:
        return f"no passage matches {query!r}"
    scores = index.retriever.get_scores(tokens)
    best = [i for i in np.argsort(-scores, kind="stable")[:top_k] if scores[i] > 0]
    if not best:
        return f"no passage matches {query!r}"
    blocks = []
    for i in best:
        passage = index.passages[i]
        text = passage.text if len(passage.text) <= MAX_PASSAGE_CHARS else passage.text[:MAX_PASSAGE_CHARS] + " [...]"
        blocks.append(f"{passage.path}:{passage.line}: {text}")
    return "\n\n".join(blocks)


def document_index(folder: str | Path) -> DocumentIndex:
    """The BM25 index of a folder's text files, kept in memory and rebuilt when a file changes.

    Files with the suffixes of `TEXT_SUFFIXES` are read recursively; hidden files and folders are not.
    Nothing outside the folder is read: symbolic links are resolved and a file whose real path lies outside
    the folder's real path is skipped, and linked folders are not entered. Files that are not UTF-8 or
    bigger than 2 MB are skipped and counted.

    Args:
        folder: The documents folder.

    Returns:
        The index; `retriever` is None when the folder holds no text.

    Raises:
        ValueError: The folder is not a directory.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"the documents folder {str(folder)!r} is not a directory")
    files, skipped_outside, signature = [], 0, []
    for directory, subdirectories, names in os.walk(root):  # os.walk does not enter linked folders
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith(".") or path.suffix.lower() not in TEXT_SUFFIXES:
                continue
            try:
                real = path.resolve()
            except (OSError, RuntimeError):  # a loop of links
                real = None
            if real is None or not real.is_relative_to(root) or not real.is_file():
                skipped_outside += 1
                continue
            stat = real.stat()
            relative = path.relative_to(root).as_posix()
            files.append((relative, real, stat.st_size))
            signature.append((relative, stat.st_mtime_ns, stat.st_size))
    signature = tuple(signature)
    with _INDEX_LOCK:  # tools run in worker threads; two calls must not build one index twice at once
        cached = _INDEXES.get(root)
        if cached is None or cached.signature != signature:
            cached = _INDEXES[root] = _build_index(root, files, skipped_outside, signature)
    return cached


def _build_index(
    root: Path, files: list[tuple[str, Path, int]], skipped_outside: int, signature: tuple
) -> DocumentIndex:
    passages, not_utf8, too_large = [], 0, 0
    for relative, real, size in files:
        if size > MAX_FILE_BYTES:
            too_large += 1
            continue
        try:
            text = real.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            not_utf8 += 1
            continue
        passages += _passages(relative, text)
    retriever = None
    if passages:
        retriever = bm25s.BM25()
        tokens = bm25s.tokenize([p.text for p in passages], stopwords="en", show_progress=False)
        retriever.index(tokens, show_progress=False)
    return DocumentIndex(root, passages, retriever, len(files), not_utf8, skipped_outside, too_large, signature)


def _passages(path: str, text: str) -> list[Passage]:
    """Runs of consecutive non-empty lines, at most `MAX_PASSAGE_LINES` each, with their first line number."""
    passages, lines, start = [], [], 0

    def flush():
        if lines:
            passages.append(Passage(path, start, "\n".join(lines)))
            lines.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or len(lines) == MAX_PASSAGE_LINES:
            flush()
        if line.strip():
            start = start if lines else number
            lines.append(line.rstrip())
    flush()
    return passages


def http_get(url: str, allow: list[str], max_bytes: int = 20000, request_timeout_s: float = 10.0) -> str:
    """Fetch a web page (only hosts on the allow-list).

    Args:
        url: The http or https address to fetch.
        allow: Hosts that may be fetched, subdomains included (set by the configuration).
        max_bytes: The most bytes of the body to read (set by the configuration).
        request_timeout_s: Seconds to wait for each server response (set by the configuration).

    Returns:
        The status line, final URL and content type, then the body as text (HTML reduced to its text),
        cut at `max_bytes`.

    Raises:
        ValueError: The allow-list is empty, the URL is not http(s), or it or a redirect leaves the allow-list.
    """
    allowed = [host.strip().lower().rstrip(".") for host in allow if host.strip()]
    if not allowed:
        raise ValueError("http_get is switched off: its allow-list is empty (set tools.http_get.allow)")
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(MAX_REDIRECTS + 1):
        _check_url(url, allowed)
        request = urllib.request.Request(url, headers={"User-Agent": "onestop-agent/1.0"})
        try:
            response = opener.open(request, timeout=request_timeout_s)
        except urllib.error.HTTPError as error:
            location = error.headers.get("Location")
            if error.code in REDIRECT_CODES and location:
                error.close()
                url = urllib.parse.urljoin(url, location)
                continue
            response = error  # 404, 500, ...: the page the server sent is an answer too
        with response:
            body = response.read(max_bytes + 1)
            return _page_text(url, response.status, response.reason, response.headers, body, max_bytes)
    raise ValueError(f"more than {MAX_REDIRECTS} redirects, last to {url}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as responses, so that `http_get` checks each hop against the allow-list."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _check_url(url: str, allowed: list[str]) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"only http and https URLs may be fetched, not {url!r}")
    host = (parts.hostname or "").rstrip(".")
    if not any(host == entry or host.endswith("." + entry) for entry in allowed):
        raise ValueError(f"host {host!r} of {url} is not on the allow-list ({', '.join(allowed)})")


def _page_text(url: str, status: int, reason: str, headers, body: bytes, max_bytes: int) -> str:
    content_type = headers.get_content_type()
    head = f"HTTP {status} {reason}\nURL: {url}\nContent-Type: {content_type}\n\n"
    cut = len(body) > max_bytes
    body = body[:max_bytes]
    if not (content_type.startswith("text/") or content_type.endswith(("json", "xml", "javascript"))):
        return head + f"({len(body)}{'+' if cut else ''} bytes of {content_type}, not shown)"
    text = body.decode(headers.get_content_charset() or "utf-8", errors="replace")
    if content_type == "text/html":
        text = _html_text(text)
    return head + text + (f"\n[cut at {max_bytes} bytes]" if cut else "")


def _html_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class _TextExtractor(HTMLParser):
    """The visible text of an HTML page, one block element a line; scripts and styles left out."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "title", "section", "article"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style") and self.hidden > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)
