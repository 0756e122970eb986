"""Agent tools: schemas read from signatures, config loading, the shipped tools, and calls that never raise."""

import functools
import http.server
import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from onestop.agents.builtin import (
    calculator,
    convert_units,
    current_datetime,
    document_index,
    format_datetime,
    http_get,
    search_documents,
)
from onestop.agents.tools import MAX_RESULT_CHARS, Tool, load_tools, run_tool_call, tool_from_function
from onestop.core.errors import OnestopError
from onestop.core.paths import CONF_DIR


def plan_trip(
    city: str,
    nights: int,
    budget: float,
    pets: bool,
    stops: list[str],
    pace: Literal["slow", "fast"] = "slow",
    note: str | None = None,
    api_key: str = "",
) -> dict:
    """Plan a trip to a city.

    The model reads only the first paragraph.

    Args:
        city: Where to go.
        nights: How many nights,
            at least one.
        budget (float): Money to spend, in euros.
        pets: Whether pets come along.
        stops: Places to visit on the way.
        pace: How busy the days are.
        note: Anything else.
        api_key: Set by the configuration.

    Returns:
        The plan.
    """
    return {"city": city, "nights": nights, "budget": budget, "note": note}


def test_schema_is_derived_from_signature_and_docstring():
    tool = tool_from_function(functools.partial(plan_trip, api_key="secret"), timeout_s=7)
    assert tool.name == "plan_trip" and tool.timeout_s == 7
    assert tool.openai_schema() == {
        "type": "function",
        "function": {
            "name": "plan_trip",
            "description": "Plan a trip to a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "Where to go."},
                    "nights": {"type": "integer", "description": "How many nights, at least one."},
                    "budget": {"type": "number", "description": "Money to spend, in euros."},
                    "pets": {"type": "boolean", "description": "Whether pets come along."},
                    "stops": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Places to visit on the way.",
                    },
                    "pace": {
                        "type": "string",
                        "enum": ["slow", "fast"],
                        "description": "How busy the days are.",
                        "default": "slow",
                    },
                    "note": {"type": "string", "description": "Anything else."},
                },
                "required": ["city", "nights", "budget", "pets", "stops"],
                "additionalProperties": False,
            },
        },
    }


def test_unbound_configuration_parameters_stay_visible():
    assert "api_key" in tool_from_function(plan_trip).parameters["properties"]


def no_hint(x) -> str:
    """No hint."""


def takes_dict(options: dict) -> str:
    """A dict."""


def takes_union(x: int | str) -> str:
    """A union."""


def takes_bare_list(x: list) -> str:
    """A bare list."""


@pytest.mark.parametrize(
    ("function", "parameter"), [(no_hint, "x"), (takes_dict, "options"), (takes_union, "x"), (takes_bare_list, "x")]
)
def test_parameters_a_model_cannot_fill_in_are_refused(function, parameter):
    with pytest.raises(OnestopError, match=f"{function.__name__}, parameter '{parameter}'"):
        tool_from_function(function)


def test_a_partial_binding_an_unknown_argument_is_refused():
    with pytest.raises(OnestopError, match="plan_trip takes no parameter 'folder'"):
        tool_from_function(functools.partial(plan_trip, folder="x"))


def tool_node(target: str, **settings) -> dict:
    return {"_target_": target, "_partial_": True, **settings}


def test_load_tools_from_a_config_node(tmp_path):
    cfg = OmegaConf.create(
        {
            "agent": {"docs": str(tmp_path)},
            "tools": {
                "calculator": tool_node("onestop.agents.builtin.calculator", timeout_s=5),
                "docs_search": tool_node("onestop.agents.builtin.search_documents", folder="${agent.docs}"),
            },
        }
    )
    calc, search = load_tools(cfg.tools)
    assert (calc.name, calc.timeout_s, search.timeout_s) == ("calculator", 5.0, 30.0)
    assert search.function.keywords == {"folder": str(tmp_path)}
    assert set(search.parameters["properties"]) == {"query", "top_k"}
    assert load_tools(None) == []


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ({"broken": tool_node("onestop.agents.builtin.no_such_tool")}, "tools.broken: cannot load"),
        ({"x": tool_node("onestop.agents.builtin.calculator", folder="d")}, "tools.x: tool calculator takes no"),
        ({"x": {"_target_": "onestop.agents.builtin.calculator", "_partial_": False}}, "tools.x: _partial_ must be"),
        ({"x": {"_partial_": True}}, "tools.x needs a _target_"),
        (
            {"x": tool_node("onestop.agents.builtin.calculator", timeout_s=0)},
            "tools.x.timeout_s must be a positive number",
        ),
        (
            {"a": tool_node("onestop.agents.builtin.calculator"), "b": tool_node("onestop.agents.builtin.calculator")},
            "tools.a and tools.b are both a tool named 'calculator'",
        ),
    ],
)
def test_load_tools_errors_are_one_line_and_name_the_key(tools, message):
    with pytest.raises(OnestopError) as error:
        load_tools(OmegaConf.create({"tools": tools}).tools)
    assert message in str(error.value) and "\n" not in str(error.value)


def compose_tools(tmp_path: Path, options: list[str]):
    """A primary config in tmp_path that selects the real conf/tools files in its defaults list."""
    primary = {
        "defaults": [{"tools": options}, "_self_"],
        "agent": {"docs": str(tmp_path)},
        "hydra": {"searchpath": [f"file://{CONF_DIR}"]},
    }
    (tmp_path / "agent_test.yaml").write_text(OmegaConf.to_yaml(primary))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="agent_test")


def test_real_tool_configs_compose_and_load(tmp_path):
    (tmp_path / "faq.md").write_text("Opening hours\nThe shop opens at nine.\n")
    cfg = compose_tools(tmp_path, ["calculator", "docs_search", "units"])
    assert list(cfg.tools) == ["calculator", "docs_search", "units"]
    tools = {tool.name: tool for tool in load_tools(cfg.tools)}
    assert set(tools) == {"calculator", "search_documents", "convert_units"}
    assert run_tool_call(tools, "calculator", '{"expression": "17*23"}').content == "391"
    found = run_tool_call(tools, "search_documents", '{"query": "when does the shop open"}')
    assert found.ok and found.content.startswith("faq.md:1: Opening hours")


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "tools").glob("*.yaml")))
def test_every_tool_option_loads_from_the_command_line_form(option, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+tools=[{option}]", f"+agent.docs={tmp_path}"])
    (tool,) = load_tools(cfg.tools)
    assert tool.description and "\n" not in tool.description
    text = (CONF_DIR / "tools" / f"{option}.yaml").read_text()
    assert text.startswith(f"# @package tools.{option}\n# ") and "invoke agent tools=[" in text


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17*23", "391"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("-2 ** 2", "-4"),
        ("2 ** 10", "1024"),
        ("2 ** -2", "0.25"),
        ("sqrt(16)", "4"),
        ("sqrt(2) / 2", "0.7071067812"),
        ("1 / 3", "0.3333333333"),
        ("24 / 2", "12"),
        ("0.1 + 0.2", "0.3"),
        ("7 // 2 + 7 % 2", "4"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("round(2.567, 2) + abs(-1)", "3.57"),
        ("floor(2.5) + ceil(2.1)", "5"),
        ("2 * pi", "6.283185307"),
        ("2 ** 64", "18446744073709551616"),
    ],
)
def test_calculator(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize(
    ("expression", "refused"),
    [
        ("x + 1", "unknown name 'x'"),
        ("__import__('os')", "function '__import__' is not allowed"),
        ("__import__('os').system('ls')", "attribute access ('.system')"),
        ("(1).__class__", "attribute access"),
        ("'a' * 3", "only numbers"),
        ("2 ** 100000", "exponent 100000 too large"),
        ("10 ** 200", "result too large"),
        ("9" * 200, "result too large"),
        ("1" * 600, "expression too long"),
        ("1 / 0", "division by zero"),
        ("1 < 2", "comparison is not allowed"),
        ("[1, 2]", "List is not allowed"),
        ("sqrt(-1)", "sqrt() cannot take -1"),
        ("2 +", "not an arithmetic expression"),
    ],
)
def test_calculator_refusals(expression, refused):
    with pytest.raises(ValueError) as error:
        calculator(expression)
    assert refused in str(error.value)


def test_current_datetime():
    assert current_datetime("Asia/Tokyo").endswith(") Asia/Tokyo")
    assert current_datetime()[:4].isdigit() and current_datetime().endswith(" UTC")
    moment = datetime(2026, 12, 2, 14, 5)
    assert format_datetime(moment, "UTC") == "2026-12-02 14:05 (Wednesday) UTC"
    assert format_datetime(moment, "Asia/Tokyo") == "2026-12-02 23:05 (Wednesday) Asia/Tokyo"
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        current_datetime("Mars/Olympus")


def test_convert_units():
    assert convert_units(5, "km", "mi") == "5 km = 3.107 mi"
    assert convert_units(26.2, "miles", "kilometers") == "26.2 mi = 42.16 km"
    assert convert_units(100, "C", "F") == "100 °C = 212 °F"
    assert convert_units(0, "K", "celsius") == "0 K = -273.1 °C"
    assert convert_units(1, "kg", "lb") == "1 kg = 2.205 lb"
    assert convert_units(1, "day", "s") == "1 day = 86400 s"
    with pytest.raises(ValueError, match=r"cannot convert mass \(kg\) to length \(m\)"):
        convert_units(1, "kg", "m")
    with pytest.raises(ValueError, match="unknown unit 'parsec'"):
        convert_units(1, "parsec", "m")


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "returns.md").write_text(
        "# Returns\n"
        "\n"
        "Shipping takes three to five days.\n"
        "\n"
        "Refunds for damaged items are paid within 14 days.\n"
        "Send a photo of the damage.\n"
    )
    (folder / "notes.txt").write_text("Team lunch is on Friday.\nBring a salad.\n")
    (folder / "long.md").write_text("".join(f"line {n} about gardening\n" for n in range(1, 20)) + "compost heap\n")
    (folder / "latin1.txt").write_bytes("Caf\xe9 refunds damaged".encode("latin-1"))
    (folder / "image.png").write_bytes(b"\x89PNG damaged refunds")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.md").write_text("TOPSECRET refunds for damaged items\n")
    (folder / "leak.md").symlink_to(outside / "secret.md")
    (folder / "leakdir").symlink_to(outside, target_is_directory=True)
    return folder


def test_search_documents_cites_file_and_line(docs):
    found = search_documents("refund for damaged items", str(docs))
    first = found.split("\n\n")[0]
    assert (
        first
        == "policies/returns.md:5: Refunds for damaged items are paid within 14 days.\nSend a photo of the damage."
    )
    # a paragraph longer than 12 lines is cut into passages that each know their first line
    assert search_documents("compost", str(docs), top_k=1) == "long.md:13: " + "\n".join(
        [*(f"line {n} about gardening" for n in range(13, 20)), "compost heap"]
    )
    assert search_documents("quantum chromodynamics", str(docs)) == "no passage matches 'quantum chromodynamics'"


def test_search_documents_reads_nothing_outside_the_folder_and_skips_non_utf8(docs):
    found = search_documents("TOPSECRET refunds damaged", str(docs), top_k=20)
    assert "TOPSECRET" not in found and "leak" not in found
    index = document_index(docs)
    assert index.skipped_outside == 1 and index.skipped_not_utf8 == 1
    assert sorted({p.path for p in index.passages}) == ["long.md", "notes.txt", "policies/returns.md"]
    with pytest.raises(ValueError, match="is not a directory"):
        search_documents("x", str(docs / "notes.txt"))
    with pytest.raises(ValueError, match="top_k must be between 1 and 20"):
        search_documents("x", str(docs), top_k=0)


def test_search_documents_sees_a_changed_file(docs):
    assert search_documents("zeppelin", str(docs)).startswith("no passage matches")
    (docs / "notes.txt").write_text("Team lunch is on Friday.\n\nThe zeppelin lands at noon.\n")
    assert search_documents("zeppelin", str(docs)) == "notes.txt:3: The zeppelin lands at noon."


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        routes = {
            "/page": (200, "text/html", b"<html><head><script>var hidden;</script></head><body><p>Hello agents</p>"),
            "/big": (200, "text/plain", b"x" * 50_000),
            "/missing": (404, "text/plain", b"nothing here"),
        }
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/page" if self.path == "/redirect-in" else "http://example.invalid/")
            self.end_headers()
            return
        status, content_type, body = routes.get(self.path, routes["/missing"])
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_site(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_get_fetches_allowed_hosts_and_follows_allowed_redirects(local_site):
    page = http_get(f"{local_site}/page", allow=["127.0.0.1"])
    assert page.startswith("HTTP 200 OK\n") and "Hello agents" in page and "hidden" not in page
    assert "Hello agents" in http_get(f"{local_site}/redirect-in", allow=["127.0.0.1"])
    assert http_get(f"{local_site}/missing", allow=["127.0.0.1"]).startswith("HTTP 404")
    assert http_get(f"{local_site}/big", allow=["127.0.0.1"], max_bytes=1000).endswith("[cut at 1000 bytes]")
    with pytest.raises(ValueError, match="host 'example.invalid' .* is not on the allow-list"):
        http_get(f"{local_site}/redirect-out", allow=["127.0.0.1"])


@pytest.mark.parametrize(
    ("url", "allow", "refused"),
    [
        ("http://example.com/", ["127.0.0.1"], "not on the allow-list"),
        ("http://notexample.com/", ["example.com"], "not on the allow-list"),
        ("http://example.com.evil.net/", ["example.com"], "not on the allow-list"),
        ("http://example.com@evil.net/", ["example.com"], "host 'evil.net'"),
        ("file:///etc/passwd", ["example.com"], "only http and https"),
        ("http://example.com/", [], "switched off"),
    ],
)
def test_http_get_refuses_before_connecting(url, allow, refused):
    with pytest.raises(ValueError, match=refused):
        http_get(url, allow=allow)


def fails(reason: str) -> str:
    """Always fails.

    Args:
        reason: Why.
    """
    raise ValueError(f"no luck: {reason}")


def sleeps(seconds: float) -> str:
    """Sleeps."""
    time.sleep(seconds)
    return "awake"


def chatty(count: int) -> list:
    """A long answer."""
    return ["word"] * count


TOOLS = [tool_from_function(f) for f in (plan_trip, fails, chatty)] + [
    Tool("sleeps", "Sleeps.", tool_from_function(sleeps).parameters, sleeps, timeout_s=0.5)
]
TRIP = {"city": "Lyon", "nights": 2, "budget": 300, "pets": False, "stops": ["Dijon"]}


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("plan", "{}", "error: unknown tool 'plan'; available: chatty, fails, plan_trip, sleeps"),
        ("plan_trip", '{"city": "Lyon",', "error: the arguments for plan_trip are not valid JSON"),
        ("plan_trip", "[1, 2]", "error: the arguments for plan_trip must be a JSON object, got an array"),
        ("plan_trip", {**TRIP, "city": None}, "error: argument 'city' of plan_trip must be a string, got null"),
        ("plan_trip", {k: v for k, v in TRIP.items() if k != "pets"}, "error: missing argument 'pets' of plan_trip"),
        ("plan_trip", {**TRIP, "hotel": "x"}, "error: plan_trip has no argument 'hotel'; its arguments are: city,"),
        (
            "plan_trip",
            {**TRIP, "nights": "2"},
            "argument 'nights' of plan_trip must be an integer, got the string \"2\"",
        ),
        ("plan_trip", {**TRIP, "nights": 2.5}, "argument 'nights' of plan_trip must be an integer, got the number 2.5"),
        ("plan_trip", {**TRIP, "pets": 1}, "argument 'pets' of plan_trip must be a boolean, got the number 1"),
        ("plan_trip", {**TRIP, "stops": [1]}, "item 0 of argument 'stops' of plan_trip must be a string"),
        ("plan_trip", {**TRIP, "pace": "medium"}, 'must be one of ["slow", "fast"], got the string "medium"'),
        ("fails", '{"reason": "rain"}', "error: fails raised ValueError: no luck: rain"),
        ("sleeps", {"seconds": 5}, "error: tool 'sleeps' timed out after 0.5 s"),
    ],
)
def test_run_tool_call_reports_every_failure_as_a_result(name, arguments, error):
    result = run_tool_call(TOOLS, name, arguments)
    assert not result.ok and error in result.content and result.content.startswith("error: ")


def test_run_tool_call_results():
    # ints for numbers, integral floats for integers, and null for an optional parameter are accepted
    result = run_tool_call(TOOLS, "plan_trip", json.dumps({**TRIP, "nights": 2.0, "note": None}))
    assert result.ok and result.content == '{"city": "Lyon", "nights": 2, "budget": 300, "note": null}'
    short = run_tool_call({"chatty": TOOLS[2]}, "chatty", {"count": 2})
    assert short.ok and short.content == '["word", "word"]'
    long = run_tool_call(TOOLS, "chatty", '{"count": 5000}')
    assert long.ok and len(long.content) < MAX_RESULT_CHARS + 100
    assert long.content.endswith(f"[cut: the first {MAX_RESULT_CHARS} of 40000 characters]")
    assert run_tool_call(TOOLS, "sleeps", None).content.startswith("error: missing argument 'seconds'")
    assert run_tool_call(TOOLS, "sleeps", '{"seconds": 0}').content == "awake"
