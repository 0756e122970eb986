"""Exact resume: after a crash (even `kill -9`) a run continues as if it had never stopped.

Lightning's checkpoint restores the weights, optimizer, scheduler and loop counters. What it does not
restore, this module does: the position inside the epoch (a seeded sampler that can skip the batches
already seen), the random number generators (dropout), checkpoint files that are never half-written (and
a resume that skips any that cannot be read), and a clean stop with a checkpoint on SIGTERM or Ctrl-C.
"""

import os
import pickle
import random
import re
import signal
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from onestop.core.errors import OnestopError
from onestop.core.files import replace_durably, temporary_beside
from onestop.core.rundir import RunDir


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written durably beside their target, then renamed: whole or absent, even after a power cut.

    A full disk ends the run in one line naming the checkpoint; the checkpoints already written stay as they
    were. Checkpoints load with `weights_only`: a checkpoint is data, never code to run.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        target = Path(path)
        kept = f"checkpoint not written, those already in {target.parent} are kept; continue with resume=auto"
        with temporary_beside(target, what=kept) as (fd, tmp):
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            replace_durably(tmp, target)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """Every generator's state in types a `weights_only` checkpoint load accepts (tensors, ints, tuples)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingPosition(Callback):
    """Checkpoints where in the epoch training is and every rank's RNG states; on resume, puts both back.

    Ranks draw different random numbers (dropout masks, for one), so each rank gets its own generators
    back. The datamodule hands the position to its sampler, whether Lightning asked for the loader
    before the checkpoint was read or after.
    """

    def __init__(self, datamodule):
        self.datamodule = datamodule
        self.epoch = 0
        self.batches_done = 0
        self._restored: dict | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch = trainer.current_epoch
        restored = self._restored
        self.batches_done = restored["batches_done"] if restored and restored["epoch"] == self.epoch else 0

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restored is None:
            return
        per_rank = self._restored.get("rng_per_rank") or []
        same_ranks = len(per_rank) == trainer.world_size
        set_rng_state(per_rank[trainer.global_rank] if same_ranks else self._restored["rng"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._restored = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.batches_done += 1

    def state_dict(self) -> dict:
        # Every rank builds the checkpoint (only rank 0 writes it), so every rank takes part in this gather.
        own = rng_state()
        per_rank = [own]
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            per_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, own)
        return {"epoch": self.epoch, "batches_done": self.batches_done, "rng": own, "rng_per_rank": per_rank}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict
        self.datamodule.resume_from(state_dict["epoch"], state_dict["batches_done"])


class StoppedBySignal(Exception):
    """Raised out of the training loop once the checkpoint of a SIGTERM or SIGINT is written: the run ends there."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class SaveOnSignal(Callback):
    """SIGTERM (a scheduler's preemption, `kill`) or SIGINT (Ctrl-C) stops every rank at the same step boundary,
    with a checkpoint, and ends the run right after it.

    Lightning's own handler runs collectives inside the signal handler and forwards the signal to the
    other ranks, which hangs a multi-process run when every rank is signalled at once (SLURM, a killed
    process group). This handler only notes the signal; after each step the ranks agree whether any of
    them was signalled (one all-reduce of a flag), then save the checkpoint together and raise
    `StoppedBySignal`. Raising, not `trainer.should_stop`: Lightning validates (and saves last.ckpt) before
    honouring should_stop, which kept a Gemma run busy ~50 s past SIGTERM, beyond SLURM's 30 s grace.
    A second Ctrl-C stops at once, without a checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, run: RunDir):
        self.run = run
        self._signalled: signal.Signals | None = None
        self._last_step = 0
        self._rank_zero = True

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installed its handlers just before; it puts the original ones back when the run ends.
        self._rank_zero = trainer.is_global_zero
        for signum in self.SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._signalled == signal.SIGINT:
            raise KeyboardInterrupt
        self._signalled = self._signalled or signal.Signals(signum)
        if self._rank_zero:  # os.write: print() inside a signal handler can collide with the one it interrupted
            again = " (Ctrl-C again stops at once, without one)" if signum == signal.SIGINT else ""
            note = f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping{again}\n"
            os.write(2, note.encode())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if not stepped:
            return  # mid gradient accumulation: a checkpoint here would lose the gradients summed so far
        if not trainer.strategy.reduce_boolean_decision(self._signalled is not None, all=False):
            return
        # Every rank names the checkpoint as rank 0 does (a rank may not have been signalled itself).
        name = trainer.strategy.broadcast(self._signalled.name if self._signalled else "SIGTERM")
        checkpoint = self.run.stop_checkpoint(name)
        trainer.save_checkpoint(checkpoint, weights_only=False)
        raise StoppedBySignal(name, trainer.global_step, checkpoint)


def first_process() -> bool:
    """Whether this is the process a run starts in (global rank 0), the one that holds the run directory.

    Read from what launchers put in the environment, before Lightning starts any rank: torchrun's RANK,
    SLURM's SLURM_PROCID, Lightning's own LOCAL_RANK and NODE_RANK for the processes it starts (which also
    inherit the SLURM_PROCID of the one that started them, so any rank above 0 counts).
    """
    return all(os.environ.get(name, "0") in ("", "0") for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def checkpoint_problem(path: Path) -> str | None:
    """Why training cannot resume from `path` (cut short, damaged, not a training checkpoint), or None.

    Reads the checkpoint's index and structure, not its tensors (memory-mapped), so it is cheap for any size.
    """
    if path.is_dir():  # DeepSpeed: `latest` names the directory of per-rank shards
        latest = path / "latest"
        tag = latest.read_text().strip() if latest.is_file() else ""
        if not tag or not any((path / tag).glob("*model_states.pt")):
            return "not a complete DeepSpeed checkpoint (no 'latest' naming its shards)"
        return None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        code = re.search(r"GLOBAL ([\w.]+)", str(error))
        if "Weights only load failed" in str(error) and code:
            return f"not a checkpoint onestop loads: it would run code ({code[1]})"
        return f"not a readable checkpoint ({str(error).strip().splitlines()[0][:160]})"
    except Exception as error:  # torch raises several unrelated types for a damaged file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        return f"not a readable checkpoint ({reason})"
    if not isinstance(loaded, dict) or not {"state_dict", "loops", "pytorch-lightning_version"} <= loaded.keys():
        return "not a training checkpoint (it lacks the trainer state: state_dict, loops)"
    return None


def newest_checkpoint(run: RunDir) -> Path:
    """The most recently written checkpoint of a run that training can resume from.

    Temporary files are ignored; a checkpoint that cannot be read (damaged, or written without fsync before
    a crash) is skipped, with a line naming it, for the one before it.
    """
    found = run.checkpoints()
    if not found:
        raise OnestopError(
            f"resume=auto: no checkpoint in {run.checkpoints_dir}; set hydra.run.dir to the run to resume, "
            "or drop resume"
        )
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"resume=auto: skipping {path}: {problem}", flush=True)
    raise OnestopError(
        f"resume=auto: none of the {len(found)} checkpoints in {run.checkpoints_dir} can be read; "
        "drop resume to start over"
    )


def resume_path(resume: str | None, run: RunDir) -> Path | None:
    """`resume=auto` (newest checkpoint of the run directory), a checkpoint path, or None."""
    if not resume:
        return None
    if resume == "auto":
        return newest_checkpoint(run)
    path = Path(resume)
    if not (path.is_file() or (path / "latest").is_file()):  # DeepSpeed checkpoints are directories
        raise OnestopError(f"config key 'resume': no checkpoint file {path}; use resume=auto or a .ckpt path")
    problem = checkpoint_problem(path)
    if problem:
        raise OnestopError(f"config key 'resume': {path} is {problem}; use resume=auto or another .ckpt")
    return path
