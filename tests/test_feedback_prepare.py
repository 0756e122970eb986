"""The web UI's feedback file outside training: `data.prepare data=feedback` reads it as training does, and the
UI's own store reads its latest ratings through the same data-layer function."""

from conftest import ASSETS, compose

from onestop.data.report import run_prepare
from onestop.deploy.feedback import FeedbackStore

FEEDBACK = ASSETS / "data" / "feedback.jsonl"


def test_data_prepare_reads_the_uis_ratings_as_training_does(capsys):
    prepared = run_prepare(compose("model=tiny", "hardware=cpu", "data=feedback", f"data.path={FEEDBACK}"))
    out = capsys.readouterr().out
    assert "desirable and" in out and "undesirable answers from the latest ratings" in out
    assert prepared.report.train_records + prepared.report.val_records > 0


def test_the_stores_entries_are_the_latest_ratings(tmp_path):
    store = FeedbackStore(tmp_path / "feedback")
    ask = [{"role": "user", "content": "2 + 3?"}]
    store.rate("c", ask, {"role": "assistant", "content": "6."}, "good")
    store.rate("c", ask, {"role": "assistant", "content": "6."}, "bad", correction="5.")
    (entry,) = store.entries()
    assert entry["rating"] == "bad" and entry["correction"] == "5."
