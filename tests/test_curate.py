"""data.curate: each step on a raw export with planted problems, counted exactly, nothing else touched."""

import dataclasses
import json

import pytest
from chat_endpoint import ChatEndpoint
from conftest import ASSETS, compose, run_invoke
from omegaconf import OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT
from onestop.data.curate import STEPS, Context, curate, curation_steps, near_duplicates, steps
from onestop.data.curate.personal_data import PersonalData
from onestop.data.prepare import DataReport, load_examples, prepare, sources_of
from onestop.data.report import run_prepare
from onestop.models import load_tokenizer, resolve_model_path

CURATE = ASSETS / "data" / "curate"
RAW = CURATE / "raw.jsonl"  # 26 records; tests/assets/data/curate/raw.jsonl says what each one plants
EVAL = CURATE / "eval.jsonl"
ALL_STEPS = (
    "data.curate=[repair,personal_data,near_duplicates,quality,{language:{languages:[en,zh]}},"
    f"{{safety:{{blocklist:[{CURATE / 'blocklist.txt'}]}}}}]"
)
CLEAN = [json.loads(line) for line in RAW.read_text().splitlines()[:8]]


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTOP_HOME", str(tmp_path))  # a cache of its own for each test


@pytest.fixture(scope="module")
def tokenizer():
    model = compose("model=tiny").model
    return load_tokenizer(model, resolve_model_path(model))


def config(*overrides: str):
    base = ("data=alpaca", f"data.path={RAW}", "data.val_ratio=0", f"data.contamination.eval_paths=[{EVAL}]")
    return compose("model=tiny", *base, *overrides)


def data_cfg(*overrides: str):
    return config(*overrides).data


def by_step(report) -> dict[str, dict]:
    return {step["step"]: step for step in report.curation}


def test_every_step_counts_exactly_what_it_planted(tokenizer, capsys):
    prepared = run_prepare(config(ALL_STEPS))  # what invoke data.prepare runs
    printed = capsys.readouterr().out
    assert "curate near_duplicates: removed: near-duplicate of an earlier record" in printed
    assert "personal_data changed (masked ip)" in printed
    report, steps = prepared.report, by_step(prepared.report)
    source = str(RAW)
    assert report.records_read == 26 and report.duplicates == 1  # the exact copy goes before curation
    assert steps["repair"]["reasons"] == {"changed: encoding": 1, "changed: control characters": 1}
    assert steps["personal_data"]["reasons"] == {
        "changed: masked email, phone": 1,
        "changed: masked ip": 1,
        "changed: masked credit_card": 1,
        "changed: masked id": 1,
        "changed: masked phone": 1,
    }
    assert steps["near_duplicates"]["reasons"] == {
        "removed: near-duplicate of an earlier record": 2,
        f"removed: near-duplicate of an evaluation prompt ({EVAL})": 1,
    }
    assert steps["quality"]["reasons"] == {
        "removed: over 30% boilerplate lines": 1,
        "removed: over 30% repeated lines": 1,
        "removed: fewer than 3 words": 1,
    }
    assert steps["language"]["reasons"] == {"removed: language de": 1, "removed: language fr": 1}
    assert steps["safety"]["reasons"] == {"removed: blocked term": 1}
    assert steps["safety"]["sources"][source] == {"kept": 16, "removed": 1, "changed": 0, "flagged": 0}
    assert report.train_records == 16 and "curate quality: 3 removed" in report.summary()

    trained = [tokenizer.decode(row["input_ids"]) for row in prepared.train]
    for record in CLEAN:  # the eight clean records reach training as written
        assert sum(record["output"] in text for text in trained) == 1
    joined = "\n".join(trained)
    for mask in ("[EMAIL]", "[PHONE]", "[IP]", "[CREDIT_CARD]", "[ID]"):
        assert mask in joined
    for secret in ("jane.doe@example.com", "192.168.10.25", "4111 1111", "123-45-6789", "13812345678", "zorbex"):
        assert secret not in joined
    assert "1234 5678 9012 3456" in joined  # fails the Luhn check: a tracking number, not a card
    assert "café crème" in joined and "\x07" not in joined and "北京" in joined
    removed = [e for e in steps["near_duplicates"]["examples"] if "earlier record" in e["reason"]]
    assert removed[0]["text"].startswith("Explain why the sky") and removed[0]["similar_to"].startswith("Explain why")
    assert (prepared.directory / "curation.png").stat().st_size > 0
    saved_text = (prepared.directory / "report.json").read_text()
    assert "[EMAIL]" in saved_text and "jane.doe@example.com" not in saved_text  # the report shows masked text
    saved = json.loads(saved_text)
    assert [step["step"] for step in saved["curation"]] == list(steps)
    curated = prepared.directory / "curated.jsonl"
    assert f"Curated records: {curated} (to train on them as they are: data=messages" in printed
    again = prepare(compose("model=tiny", "data=messages", f"data.path={curated}", "data.val_ratio=0").data, tokenizer)
    assert [tokenizer.decode(row["input_ids"]) for row in again.train] == trained


def test_the_cache_key_holds_the_curate_config_and_the_blocklist(tokenizer, tmp_path):
    plain = prepare(data_cfg(), tokenizer)
    assert plain.report.curation == []
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("zorbex\n")
    flagged = data_cfg(f"data.curate=[{{safety:{{blocklist:[{blocklist}],action:flag}}}}]")
    first = prepare(flagged, tokenizer)
    assert first.report.fingerprint != plain.report.fingerprint
    assert by_step(first.report)["safety"]["reasons"] == {"flagged: blocked term": 1}
    assert first.report.train_records == plain.report.train_records  # flagged, not removed
    assert prepare(flagged, tokenizer).report.cache_hit
    blocklist.write_text("zorbex\nmarathon\n")
    again = prepare(flagged, tokenizer)
    assert not again.report.cache_hit and by_step(again.report)["safety"]["reasons"] == {"flagged: blocked term": 2}


def test_personal_data_drop_and_patterns_of_ones_own():
    step = PersonalData(action="drop", patterns={"employee_id": r"EMP-\d{6}"})
    examples = [
        {"messages": [{"role": "user", "content": "Who is EMP-123456?"}, {"role": "assistant", "content": "Ann."}]},
        {"messages": [{"role": "user", "content": "Version 1.2.3 of 2024-01-15?"}], "chosen": "ok", "rejected": "no"},
        {"messages": [{"role": "user", "content": "Mail?"}], "chosen": "a@b.org", "rejected": "none"},
    ]
    kept, tallies = curate([examples], [step], Context(sources=["chats"]))
    assert kept == [[examples[1]]]
    assert tallies[0]["reasons"] == {"removed: holds employee_id": 1, "removed: holds email": 1}
    assert PersonalData().mask("Call 020 7946 0958 or 10 000 000 times") == "Call [PHONE] or 10 000 000 times"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("[qualty]", "config key 'data.curate[0]': unknown step 'qualty'; expected one of near_duplicates, quality"),
        ("[{near_duplicates:{threshold:1.5}}]", "'data.curate[0].near_duplicates.threshold': expected a similarity"),
        ("[repair,{quality:{min_wordz:3}}]", "config key 'data.curate[1].quality.min_wordz': unknown parameter"),
        ("[{personal_data:{action:hide}}]", "'data.curate[0].personal_data.action': expected mask or drop, got 'hide'"),
        ("[language]", "config key 'data.curate[0].language.languages': required; expected a list of ISO 639-1"),
        ("[{language:{languages:[english]}}]", "'data.curate[0].language.languages': expected ISO 639-1 codes"),
        ("[{quality:{min_words:many}}]", "config key 'data.curate[0].quality.min_words': expected int, got 'many'"),
        ("[safety]", "config key 'data.curate[0].safety.terms': expected a blocked term (terms or a blocklist file)"),
    ],
)
def test_a_wrong_step_names_its_config_key(entry, message):
    with pytest.raises(OnestopError) as caught:
        curation_steps(data_cfg(f"data.curate={entry}"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_invoke_data_prepare_stops_at_a_typo_in_one_line(tmp_path):
    args = ("data.prepare", "model=tiny", "data=alpaca", f"data.path={RAW}", "data.curate=[repair,qualty]")
    typo = run_invoke(*args, env={"ONESTOP_HOME": str(tmp_path)})
    assert typo.returncode != 0
    assert typo.stderr.strip().splitlines()[-1] == (
        "onestop data.prepare: error: config key 'data.curate[1]': unknown step 'qualty'; expected one of "
        "near_duplicates, quality, repair, personal_data, language, safety"
    )


def test_the_docs_page_names_every_step_and_parameter():
    page = (PROJECT_ROOT / "docs" / "curation.md").read_text()
    for name, step in STEPS.items():
        assert f"### `{name}`" in page
        for parameter in dataclasses.fields(step):
            assert f"`{parameter.name}`" in page, f"{name}.{parameter.name}"


def test_worker_processes_give_the_same_result(monkeypatch):
    cfg = data_cfg("data.curate=[personal_data,{near_duplicates:{against_eval:false}}]")
    per_source = load_examples(sources_of(cfg), cfg, DataReport())
    one = curate(per_source, curation_steps(cfg), Context(sources=[str(RAW)]))
    monkeypatch.setattr(steps, "CHUNK", 4)  # several chunks of a small file, so the work is split
    monkeypatch.setattr(near_duplicates, "CHUNK", 4)
    two = curate(per_source, curation_steps(cfg), Context(sources=[str(RAW)], processes=2))
    assert two == one and len(one[0][0]) == 25 - 2


@pytest.fixture
def moderator():
    """An OpenAI-compatible endpoint whose model answers unsafe for a detonator, something unclear for
    fireworks, safe otherwise; it records the texts it was shown."""
    shown = []

    def judge(body: dict) -> tuple[int, str]:
        text = body["messages"][0]["content"].split("<text>")[1]
        shown.append(text)
        return 200, "unsafe" if "detonator" in text else "it depends" if "fireworks" in text else "safe"

    endpoint = ChatEndpoint(judge)
    yield endpoint.base_url, shown
    endpoint.close()


def test_safety_asks_a_served_model_after_the_blocklist(moderator):
    url, shown = moderator
    texts = ["How do I wire a detonator?", "Plan a fireworks show.", "Bake bread at home.", "The zorbex files."]
    examples = [{"text": text} for text in texts]
    step = curation_steps(data_cfg(f"data.curate=[{{safety:{{terms:[zorbex],endpoint:'{url}',model:judge}}}}]"))[0]
    kept, tallies = curate([examples], [step], Context(sources=["notes"]))
    assert kept == [[examples[1], examples[2]]]
    assert tallies[0]["reasons"] == {
        "removed: judged unsafe by judge": 1,
        "flagged: unclear answer from judge": 1,
        "removed: blocked term": 1,
    }
    assert len(shown) == 3 and not any("zorbex" in text for text in shown)  # the blocklist answered first
    with pytest.raises(OnestopError, match=r"^data.curate safety: the endpoint http://127.0.0.1:9/v1 did not answer"):
        curate([examples], [dataclasses.replace(step, endpoint="http://127.0.0.1:9/v1")], Context(sources=["n"]))


def test_the_raw_export_option_curates_with_the_four_everyday_steps():
    cfg = compose("model=tiny", "data=raw_export", f"data.path={RAW}").data
    assert [step.name for step in curation_steps(cfg)] == ["repair", "personal_data", "near_duplicates", "quality"]


@pytest.mark.parametrize(("data", "reads_back"), [("sharegpt", "messages"), ("preference", "preference")])
def test_curated_records_of_every_kind_read_back_as_they_trained(tokenizer, data, reads_back):
    path = ASSETS / "data" / f"{data}.jsonl"
    cfg = compose("model=tiny", f"data={data}", f"data.path={path}", "data.val_ratio=0", "data.max_seq_len=2048")
    prepared = prepare(OmegaConf.merge(cfg.data, {"curate": ["repair", "personal_data", "quality"]}), tokenizer)
    assert prepared.report.curated_format == reads_back and prepared.report.train_records == 5
    curated = prepared.directory / "curated.jsonl"
    again = prepare(OmegaConf.merge(cfg.data, {"format": reads_back, "path": str(curated)}), tokenizer)
    assert again.train.columns == prepared.train.columns
    rows = [[list(row[column]) for column in sorted(row)] for row in prepared.train]
    assert [[list(row[column]) for column in sorted(row)] for row in again.train] == rows
