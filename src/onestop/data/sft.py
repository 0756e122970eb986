"""Batching prepared data for Lightning: conversations with answer-only labels, raw text, preference pairs, or
rated single answers.

A training stage says which layout its loss reads (`layout`): `tokens` (any single sequences), `text` (raw text
only), `pairs` (chosen/rejected) or `rated` (answers marked desirable or not); the data must be of that layout.
"""

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from onestop.core.errors import OnestopError
from onestop.data.batching import pad_batch, pad_pairs, pad_rated
from onestop.data.media import MEDIA_COLUMN, collate_media
from onestop.data.packing import collate_packed, collate_padding_free, pack_examples
from onestop.data.prepare import DataReport, PreparedData, prepare, sources_of
from onestop.data.records import is_hub_dataset_id
from onestop.data.sampler import ResumableSampler
from onestop.data.streaming import TextBlockStream
from onestop.data.windows import StepWindowLoader

LAYOUTS = ("tokens", "text", "pairs", "rated")
# Per layout, what data makes it: in the one-line error when a stage gets other data.
NEEDS = {
    "text": "raw text (data=text)",
    "pairs": "preference pairs (data=preference)",
    "rated": "answers rated desirable or not (data=unpaired, data=feedback for the web UI's ratings, or the two sides "
    "of preference pairs)",
}


def data_layout(prepared: PreparedData) -> str:
    """The layout prepared data has: pairs, rated, or tokens (single sequences)."""
    if "chosen_input_ids" in prepared.train.columns:
        return "pairs"
    return "rated" if "desirable" in prepared.train.columns else "tokens"


class SFTDataModule(L.LightningDataModule):
    """Train and validation examples of a `data` config node, prepared (or read from cache) for one tokenizer."""

    def __init__(
        self,
        data_cfg: DictConfig,
        tokenizer,
        seed: int = 42,
        stage: str = "sft",
        accumulate_grad_batches: int = 1,
        layout: str | None = None,
        prepared: PreparedData | None = None,
    ):
        """`layout`: what the stage's loss reads (LAYOUTS); None takes whatever the data is. `prepared`: the data
        already prepared for this `data_cfg` and tokenizer (the training stage prepares before it plans)."""
        super().__init__()
        self.stage = stage
        self.layout = layout
        self._given = prepared
        self.accumulate_grad_batches = accumulate_grad_batches  # before a Trainer holds the module
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.report = DataReport()
        self.train_set: Sequence[dict] = []
        self.val_set: Sequence[dict] = []
        self.val_conversations: list[list[dict]] = []
        self.prepared = None
        self.sampler = None
        self.resume_at: tuple[int, int] | None = None
        self.stream = None

    def setup(self, stage: str | None = None) -> None:
        if len(self.train_set) or self.stream is not None:
            return
        if self.cfg.streaming:
            self._setup_stream()
            return
        prepared = self._given or prepare(self.cfg, self.tokenizer, seed=self.seed)
        has, got = data_layout(prepared), f"got data.format={self.cfg.format}"
        self.layout = self.layout or has
        if self.layout == "text" and self.cfg.format != "text":
            raise OnestopError(f"stage={self.stage}: needs {NEEDS['text']}; {got}")
        pairs_as_rated = self.layout == "rated" and has == "pairs"  # each chosen answer desirable, rejected not
        if has != self.layout and self.layout in ("pairs", "rated") and not pairs_as_rated:
            raise OnestopError(f"stage={self.stage}: needs {NEEDS[self.layout]}; {got}")
        if has in ("pairs", "rated") and self.layout in ("tokens", "text"):
            trains = {"pairs": "stage=dpo, orpo, simpo or kto", "rated": "stage=kto"}[has]
            raise OnestopError(f"stage={self.stage}: {NEEDS[has].split(' (')[0]} train with {trains}; {got}")
        self.prepared, self.report = prepared, prepared.report
        self.train_set, self.val_set = prepared.train, prepared.val
        if self.cfg.packing is True:  # the training stage resolves `auto` first (onestop.data.packing.resolve_packing)
            if self.layout in ("pairs", "rated"):
                what = NEEDS[self.layout].split(" (")[0]
                raise OnestopError(f"data.packing: {what} are not packed; set data.packing=false")

            self.train_set = pack_examples(prepared.train, self.cfg.max_seq_len, self.seed)
            tokens = int(prepared.train.example_lengths().sum())
            print(
                f"packing: {len(prepared.train)} examples in {len(self.train_set)} sequences of up to "
                f"{self.cfg.max_seq_len} tokens ({tokens / (len(self.train_set) * self.cfg.max_seq_len):.0%} full): "
                f"{self.steps_per_epoch(len(self.train_set))} optimizer steps per epoch "
                f"(unpacked: {self.steps_per_epoch(len(prepared.train))}); data.batch_size counts packed rows",
                flush=True,
            )
        self.val_conversations = [
            e["messages"] for e in prepared.val_examples if e.get("messages", [{}])[-1].get("role") == "assistant"
        ]

    def _setup_stream(self) -> None:
        """Raw text read lazily from its files; validation, if any, prepared normally from `data.val_path`."""
        if self.cfg.format != "text":
            raise OnestopError(f"data.streaming: streams raw text (data=text); got data.format={self.cfg.format}")
        if self.cfg.get("curate"):
            raise OnestopError(
                "data.curate: a streamed corpus is read as it trains, never curated as a whole; "
                "set data.streaming=false, or data.curate=[]"
            )
        paths = [source.path for source in sources_of(self.cfg)]
        for path in paths:
            if is_hub_dataset_id(path) or not Path(path).is_file():
                raise OnestopError(f"data.streaming: {path}: no such local file (streaming reads local files)")
        self.stream = TextBlockStream(paths, self.tokenizer, self.cfg.max_seq_len, self.cfg.columns.get("text", "text"))
        if self.cfg.val_path:
            val_cfg = OmegaConf.merge(
                self.cfg, {"path": self.cfg.val_path, "val_path": None, "val_ratio": 0.0, "streaming": False}
            )
            self.val_set = prepare(val_cfg, self.tokenizer, seed=self.seed).train
        self.report = DataReport(sources=[{"path": p, "format": "text", "records": 0, "valid": 0} for p in paths])
        self.report.val_records = len(self.val_set)
        print(
            f"data: streaming {len(paths)} file(s) in blocks of {self.cfg.max_seq_len} tokens; "
            f"{len(self.val_set)} validation examples",
            flush=True,
        )

    def steps_per_epoch(self, sequences: int) -> int:
        """Optimizer steps one epoch of `sequences` makes on this run's devices and accumulation."""
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        accumulate = trainer.accumulate_grad_batches if trainer else self.accumulate_grad_batches
        batches = -(-sequences // (self.cfg.batch_size * world))
        return -(-batches // max(accumulate, 1))

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "position_ids" in examples[0]:
            return collate_packed(examples, self.tokenizer.pad_token_id)
        if self.layout == "pairs":
            return pad_pairs(examples, self.tokenizer.pad_token_id)
        if self.layout == "rated":
            return pad_rated(examples, self.tokenizer.pad_token_id)
        if MEDIA_COLUMN in examples[0]:  # a vision-language model's rows: padded (never padding-free), with pixels
            return collate_media(examples, self.tokenizer)
        if self.cfg.padding_free is True:  # the training stage resolves `auto` first (resolve_padding_free)
            return collate_padding_free(examples, self.tokenizer.pad_token_id)
        return pad_batch(examples, self.tokenizer.pad_token_id)

    def resume_from(self, epoch: int, batches_done: int) -> None:
        """Start training `batches_done` batches into `epoch`.

        A loader made before the checkpoint was read moves too: FSDP and DeepSpeed restore a checkpoint
        only after setup, when the learning-rate schedule has already asked for the loader's length.
        """
        self.resume_at = (epoch, batches_done)
        if self.sampler is not None:
            self.sampler.resume_at = self.resume_at
        if self.stream is not None:
            self.stream.skip_blocks = batches_done * self.cfg.batch_size

    def train_dataloader(self) -> DataLoader:
        if self.stream is not None:
            if self.resume_at is not None:
                self.stream.skip_blocks = self.resume_at[1] * self.cfg.batch_size
            return self._loader(self.stream)

        self.sampler = ResumableSampler.for_trainer(
            len(self.train_set), self.cfg.batch_size, self.seed, self.trainer, self.resume_at
        )
        return self._loader(
            self.train_set,
            sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            generator=self._own_generator(),
        )

    def _loader(self, dataset, **options) -> DataLoader:
        """The training loader: for token-level losses, one whose batches know their optimizer step's token count
        (onestop.data.windows); pairs and rated answers are scored per sequence, so their loader is a plain one."""
        options.update(batch_size=self.cfg.batch_size, collate_fn=self.collate)
        if self.layout in ("pairs", "rated"):
            return DataLoader(dataset, **options)
        accumulate = self.trainer.accumulate_grad_batches if self.trainer else 1
        return StepWindowLoader(dataset, accumulate=accumulate, batches_done=self._batches_done, **options)

    def _batches_done(self) -> int:
        """Batches of the epoch about to be iterated that a resumed run has already trained on."""
        if self.resume_at is None:
            return 0
        epoch, batches_done = self.resume_at
        current = self.trainer.current_epoch if self.trainer else epoch
        return batches_done if epoch == current else 0

    def _own_generator(self) -> torch.Generator:
        """Loaders draw worker seeds from this, not from the global RNG that dropout uses, so when a loader is
        created or iterated does not change training randomness, and a resumed run matches an unbroken one."""
        return torch.Generator().manual_seed(self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.cfg.batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            generator=self._own_generator(),
        )
