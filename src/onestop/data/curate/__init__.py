"""Data curation: the steps `data.curate` lists, run in order on every source before tokenizing.

`invoke data.prepare data=alpaca data.path=raw.jsonl data.curate=[repair,near_duplicates,quality,personal_data]`
repairs text, removes near-duplicates and low-quality records and masks personal data; the data report counts
what each step kept, removed, changed or flagged, per source, with a few examples (docs/curation.md).
"""

from dataclasses import asdict

from omegaconf import DictConfig, OmegaConf

from onestop.data.curate.language import Language
from onestop.data.curate.near_duplicates import NearDuplicates
from onestop.data.curate.personal_data import PersonalData
from onestop.data.curate.quality import Quality
from onestop.data.curate.repair import Repair
from onestop.data.curate.safety import Safety
from onestop.data.curate.steps import Context, Step, Tally, parse_steps

STEPS: dict[str, type[Step]] = {
    step.name: step for step in (NearDuplicates, Quality, Repair, PersonalData, Language, Safety)
}

__all__ = ["STEPS", "Context", "Step", "Tally", "as_record", "curate", "curation_steps"]


def curation_steps(data_cfg: DictConfig) -> list[Step]:
    """The steps of `data.curate`, checked; a wrong entry raises one line naming its config key."""
    entries = data_cfg.get("curate")
    if entries is None:
        return []
    plain = OmegaConf.to_container(entries, resolve=True) if OmegaConf.is_config(entries) else entries
    return parse_steps(plain, STEPS)


def curate(per_source: list[list[dict]], steps: list[Step], context: Context) -> tuple[list[list[dict]], list[dict]]:
    """The examples each source keeps after every step, and per step what it did (the report's `curation`)."""
    tallies = []
    for step in steps:
        params = {k: v for k, v in asdict(step).items() if not k.startswith("_")}
        tally = Tally(step=step.name, params=params)
        per_source = step.run(per_source, context, tally)
        tallies.append(asdict(tally))
    return per_source, tallies


def as_record(example: dict) -> dict:
    """A normalised example as a record onestop reads back: data=messages, data=text or data=preference."""
    if "text" in example:
        return {"text": example["text"]}
    if "chosen" in example:
        return {"prompt": example["messages"], "chosen": example["chosen"], "rejected": example["rejected"]}
    return {"messages": example["messages"], **({"tools": example["tools"]} if example.get("tools") else {})}
