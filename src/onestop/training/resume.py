"""Exact resume: after a crash (even `kill -9`) a run continues as if it had never stopped.

Lightning's checkpoint restores the weights, optimizer, scheduler and loop counters. What it does not
restore, this module does: the position inside the epoch (a seeded sampler that can skip the batches
already seen), the random number generators (dropout), and checkpoint files that are never half-written.
"""

import os
import random
import signal
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside its target, then rename: whole or absent."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


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


class SaveOnSigterm(Callback):
    """SIGTERM (a scheduler's preemption, `kill`) stops every rank at the same step boundary, with a checkpoint.

    Lightning's own handler runs collectives inside the signal handler and forwards the signal to the
    other ranks, which hangs a multi-process run when every rank is signalled at once (SLURM, a killed
    process group). This handler only notes the signal; after each step the ranks agree whether any of
    them was signalled (one all-reduce of a flag), then save the checkpoint together and stop.
    """

    def __init__(self, path: Path):
        self.path = path
        self.saved: Path | None = None
        self._signalled = False
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installed its handler just before; it puts the original one back when the run ends.
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        self._signalled = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if not stepped:
            return  # mid gradient accumulation: a checkpoint here would lose the gradients summed so far
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        trainer.save_checkpoint(self.path)
        self.saved = self.path
        trainer.should_stop = True


def newest_checkpoint(run: RunDir) -> Path:
    """The most recently written complete checkpoint of a run (temporary files and directories are ignored)."""
    found = run.checkpoints()
    if not found:
        raise OnestopError(
            f"resume=auto: no checkpoint in {run.checkpoints_dir}; set hydra.run.dir to the run to resume, "
            "or drop resume"
        )
    return found[-1]


def resume_path(resume: str | None, run: RunDir) -> Path | None:
    """`resume=auto` (newest checkpoint of the run directory), a checkpoint path, or None."""
    if not resume:
        return None
    if resume == "auto":
        return newest_checkpoint(run)
    path = Path(resume)
    if not (path.is_file() or (path / "latest").is_file()):  # DeepSpeed checkpoints are directories
        raise OnestopError(f"config key 'resume': no checkpoint file {path}; use resume=auto or a .ckpt path")
    return path
