"""Meeting the other processes of a multi-process run within a bounded time, or stopping in one line.

Lightning starts torch.distributed with one timeout for everything: the rendezvous (a node connecting to
`MASTER_ADDR:MASTER_PORT`, node 0 waiting for the others) and every later collective, 30 minutes by
default. A node given a wrong address or port, or blocked by a firewall, would wait half an hour for
nothing, then print torch's C++ stack traces. Here the rendezvous gets `hardware.rendezvous_timeout_s` and
fails in one line naming the address and port; the collectives keep Lightning's timeout (a rank may wait
long while rank 0 writes a big checkpoint). Under torchrun, torchrun has met the other nodes before
training starts (its `--rdzv-conf timeout=N` bounds that); the limit here then covers only the handshake.
"""

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from typing import IO

import torch.distributed
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.distributed_c10d import _set_pg_timeout

from onestop.core.environment import debugging
from onestop.core.errors import OnestopError

DEFAULT_RENDEZVOUS_TIMEOUT_S = 600.0  # torchrun's own default; nodes may start (and load a model) minutes apart


class BoundedRendezvous:
    """Mixed into a Lightning strategy (before it): `setup_distributed` meets the other processes within
    `rendezvous_timeout_s`, then gives the collectives the strategy's own timeout back."""

    rendezvous_timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S

    def setup_distributed(self) -> None:
        if self.num_nodes > 1 and not torch.distributed.is_initialized():  # validating after fit meets no one
            print(
                f"rank {self.cluster_environment.global_rank()}: meeting the other nodes at {self._address()} "
                f"(up to {self.rendezvous_timeout_s:g} s, hardware.rendezvous_timeout_s)",
                flush=True,
            )
        collectives_timeout = self._timeout
        self._timeout = timedelta(seconds=self.rendezvous_timeout_s)
        try:
            with _stderr_held() as held:
                super().setup_distributed()
        except torch.distributed.DistError as error:
            raise OnestopError(self._unreachable()) from error
        finally:
            self._timeout = collectives_timeout
        _replay(held)
        if collectives_timeout is not None:
            _set_pg_timeout(collectives_timeout)

    def _address(self) -> str:
        return f"{self.cluster_environment.main_address}:{self.cluster_environment.main_port}"

    def _unreachable(self) -> str:
        seconds = f"{self.rendezvous_timeout_s:g}"
        rank, world_size = self.cluster_environment.global_rank(), self.cluster_environment.world_size()
        if rank == 0:
            return (
                f"hardware.rendezvous_timeout_s={seconds}: rank 0 waited at the rendezvous {self._address()} and "
                f"not all {world_size} processes came; start the same command on every node "
                f"(hardware.num_nodes={self.num_nodes}) and check that they can reach {self._address()}"
            )
        return (
            f"hardware.rendezvous_timeout_s={seconds}: rank {rank} of {world_size} could not reach the rendezvous "
            f"at {self._address()}; start node 0 there (or correct MASTER_ADDR / MASTER_PORT), check the firewall"
        )


class TimedDDPStrategy(BoundedRendezvous, DDPStrategy):
    """Lightning's DDP, meeting the other processes within `rendezvous_timeout_s`."""

    def __init__(self, rendezvous_timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rendezvous_timeout_s = rendezvous_timeout_s


@contextlib.contextmanager
def _stderr_held() -> Iterator[IO[bytes] | None]:
    """Within the block, what is written to file descriptor 2 (torch's C++ logs: each failed connection
    attempt with its stack trace) goes to a temporary file; ONESTOP_DEBUG=1 leaves it on the terminal."""
    if debugging():
        yield None
        return
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    try:
        yield held
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _replay(held: IO[bytes] | None) -> None:
    """After a rendezvous that succeeded, what it wrote reaches stderr as it would have."""
    if held is None:
        return
    held.seek(0)
    sys.stderr.flush()
    os.write(2, held.read())
    held.close()
