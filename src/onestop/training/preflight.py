"""Before the model loads: will the run fit the device, and which micro-batch reaches data.global_batch_size."""

import copy
from dataclasses import replace

from omegaconf import DictConfig

from onestop.selection.devices import GIB, this_machine, total_ram
from onestop.selection.estimate import (
    WillNotFit,
    check_fits,
    choose_micro_batch,
    configured_loss_chunk,
    estimate,
    settings_from_config,
)


def resolve_loss_chunk(cfg: DictConfig, longest: int | None) -> int:
    """train.loss_chunk_size as this run uses it: the number set, or for `auto` what the estimate chooses
    (onestop.selection.estimate.auto_loss_chunk); 0 where the estimate cannot run (an architecture the
    meta-device probe does not know), which is the head whole, as before `auto`."""
    chunk = configured_loss_chunk(cfg)
    if chunk is not None:
        return chunk
    try:
        device = this_machine(measure_speed=False, memory_limit_gib=cfg.hardware.memory_limit_gib)
        return int(estimate(cfg, device, settings_from_config(cfg, device, longest)).settings.loss_chunk or 0)
    except Exception:  # as the memory check: an architecture the probe cannot run trains with the head whole
        return 0


def memory_preflight(cfg: DictConfig, longest: int | None) -> tuple[str | None, tuple[int, int] | None]:
    """Stop a run that will not fit (hardware.memory_check) and choose the micro-batch for
    data.global_batch_size; returns the line to print, if any, and the chosen (micro-batch, accumulation) for
    data.global_batch_size (None: the config's own). `longest` is the longest sequence the data makes (None:
    data.max_seq_len). `cfg` is left as it is.

    Several CPU processes share one machine's RAM: each gets an equal part of the total, the same figure in
    every process, so all ranks choose the same micro-batch.
    """
    if not (cfg.hardware.memory_check or cfg.data.get("global_batch_size")):
        return None, None
    try:
        device = this_machine(measure_speed=False, memory_limit_gib=cfg.hardware.memory_limit_gib)
        processes = cfg.hardware.devices if isinstance(cfg.hardware.devices, int) else 1
        if device.kind == "cpu" and processes > 1:
            share = total_ram() / processes / GIB
            device = replace(device, memory_gib=min(share, cfg.hardware.memory_limit_gib or share))
        if cfg.data.get("global_batch_size"):
            chosen = choose_micro_batch(copy.deepcopy(cfg), device, longest)  # it writes its choice into the copy
            return (
                f"data.global_batch_size={cfg.data.global_batch_size}: micro-batch {chosen.micro_batch} x "
                f"accumulation {chosen.accumulation} x {chosen.devices} device(s), the largest that fits "
                f"{device.name} ({device.memory_gib:.2f} GiB)"
            ), (chosen.micro_batch, chosen.accumulation)
        check_fits(cfg, device, longest)
    except WillNotFit:
        raise
    except Exception as error:  # an architecture the meta-device probe cannot run: train without the check
        return f"memory check skipped ({type(error).__name__}: {str(error).splitlines()[0][:120]})", None
    return None, None
