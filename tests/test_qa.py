"""Question-answer pairs from documents, against real HTTP servers on 127.0.0.1.

A scripted OpenAI-compatible server pins down parsing, validation, dedup, retries and resume; the real
`transformers serve` with the tiny model checks the whole command end to end (its pairs are nonsense).
"""

import json

import pytest
from chat_endpoint import ChatEndpoint
from conftest import ASSETS, run_invoke

from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.data.qa import chunk_document, generate_qa, parse_pairs
from onestop.deploy.server import ServedModel

DOC = """# Install

Run the installer. It takes a minute.

## Options

Set `--fast` to skip checks.

# Usage

Type `tool run` to start.
"""


class ScriptedEndpoint(ChatEndpoint):
    """Replies from a script, one per request; counts what it was asked."""

    def __init__(self, script):
        self.script = list(script)
        self.prompts: list[str] = []
        super().__init__(self._next_reply)

    def _next_reply(self, body: dict) -> tuple[int, str]:
        self.prompts.append(body["messages"][0]["content"])
        return self.script.pop(0) if self.script else (200, "[]")


def qa_cfg(tmp_path, base_url, *extra):
    return compose(
        "data_qa",
        [f"source={tmp_path / 'docs'}", f"output={tmp_path / 'out'}", f"endpoint.base_url={base_url}",
         "endpoint.model=scripted", "chunk_chars=60", "overlap_chars=0", "backoff_seconds=0.01", *extra],
    )  # fmt: skip


def test_markdown_chunks_follow_headings_and_have_stable_ids(tmp_path):
    chunks = chunk_document(tmp_path / "a.md", DOC, size=60, overlap=0)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Install", "## Options", "# Usage"]
    assert all(len(c.text) <= 60 for c in chunks)
    again = chunk_document(tmp_path / "a.md", DOC, size=60, overlap=0)
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]
    overlapping = chunk_document(tmp_path / "a.md", "word " * 100, size=120, overlap=30)
    assert all(len(c.text) <= 120 for c in overlapping)
    assert overlapping[1].text.startswith(overlapping[0].text[-30:].strip()[:10])


def test_replies_are_parsed_bare_or_fenced():
    assert parse_pairs('[{"question": "q", "answer": "a"}]') == [{"question": "q", "answer": "a"}]
    assert parse_pairs('Sure!\n```json\n[{"question": "q", "answer": "a"}]\n```') == [{"question": "q", "answer": "a"}]
    assert parse_pairs("I cannot help with that.") is None


def test_generation_validates_dedups_retries_and_resumes(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(DOC)
    good = json.dumps([{"question": "How do I install?", "answer": "Run the installer."}])
    mixed = json.dumps(
        [
            {"question": "How do I install?", "answer": "Run it."},  # duplicate question
            {"question": "Fast mode?", "answer": "Fast mode?"},  # answer repeats the question
            {"question": "Skip checks?", "answer": "Set --fast."},
        ]
    )
    endpoint = ScriptedEndpoint([(429, ""), (200, good), (200, "no JSON here"), (200, mixed)])
    try:
        path, report = generate_qa(qa_cfg(tmp_path, endpoint.base_url))
        assert len(endpoint.prompts) == 4  # three chunks, one retried after the 429
        assert report.retries == 1 and report.chunks == 3 and report.chunks_asked == 3
        assert report.replies_unparseable == 1
        assert report.pairs_invalid == {"answer repeats the question": 1}
        assert report.duplicates == 1 and report.pairs_written == 2
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["messages"][0]["content"] for r in rows] == ["How do I install?", "Skip checks?"]
        assert all(r["source"].endswith("guide.md") and len(r["chunk_id"]) == 16 for r in rows)
        saved = json.loads((path.parent / "report.json").read_text())
        assert saved["pairs_written"] == 2

        _, again = generate_qa(qa_cfg(tmp_path, endpoint.base_url))
        assert len(endpoint.prompts) == 4, "a rerun asked again"
        assert again.chunks_from_progress == 3 and again.pairs_written == 2
    finally:
        endpoint.close()


def test_unreachable_endpoint_and_missing_model_fail_in_one_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(DOC)
    with pytest.raises(OnestopError, match=r"APIConnectionError after 2 attempts"):
        generate_qa(qa_cfg(tmp_path, "http://127.0.0.1:9/v1", "max_retries=1"))
    with pytest.raises(OnestopError, match="config key 'endpoint.model': not set"):
        generate_qa(qa_cfg(tmp_path, "http://127.0.0.1:9/v1", "endpoint.model=null"))
    with pytest.raises(OnestopError, match="config key 'source': no .md or .txt documents match"):
        generate_qa(qa_cfg(tmp_path, "http://127.0.0.1:9/v1", f"source={tmp_path / 'nothing'}/*.md"))


@pytest.mark.slow
def test_invoke_data_qa_against_the_served_tiny_model(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(DOC)
    args = [
        "data.qa", f"source={tmp_path / 'docs'}", f"output={tmp_path / 'out'}", "chunk_chars=60",
        "overlap_chars=0", "max_tokens=16",
    ]  # fmt: skip
    with ServedModel(ASSETS / "tiny-qwen2") as served:
        endpoint = [f"endpoint.base_url={served.base_url}", f"endpoint.model={served.model_name}"]
        first = run_invoke(*args, *endpoint)
        assert first.returncode == 0, first.stderr[-2000:]
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["chunks"] == 3 and report["chunks_asked"] == 3
        assert (
            report["pairs_written"] + report["duplicates"] + sum(report["pairs_invalid"].values())
            == report["pairs_returned"]
        )
        assert len((tmp_path / "out" / "progress.jsonl").read_text().splitlines()) == 3
        for line in (tmp_path / "out" / "qa.jsonl").read_text().splitlines():
            assert json.loads(line)["messages"][1]["role"] == "assistant"
        second = run_invoke(*args, *endpoint)
        assert second.returncode == 0
        assert json.loads((tmp_path / "out" / "report.json").read_text())["chunks_from_progress"] == 3
