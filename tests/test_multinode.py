"""Multi-node training, proven on one machine: two nodes on 127.0.0.1, each started as docs/hardware.md says.

Each node is its own launcher and process group: torchrun with `--nnodes=2 --node_rank=0/1` and a
rendezvous on loopback, or the variables `srun` gives each task (set here by hand, as SLURM would). The
nodes train the tiny model over gloo: they end with the same weights, only global rank 0 writes
checkpoints, a run whose node is killed continues with `resume=auto` once both are started again and ends
bitwise where the unbroken run ends, and FSDP shards across the nodes. A node that cannot meet the others
stops within `hardware.rendezvous_timeout_s` in one line naming the address, and the collectives after it
keep Lightning's 30 minutes. What one machine cannot show (a real network, NCCL, GPUs) is listed in
docs/hardware.md as unproven.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import TINY
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from safetensors.torch import load_file

from onestop.core.paths import PROJECT_ROOT
from onestop.training.rendezvous import TimedDDPStrategy

BIN = Path(sys.executable).parent
# 18 training records, two per rank and step: 4 steps an epoch, so 12 steps cross epochs and the resumed
# run starts mid-epoch.
TWO_NODES = [
    *[o for o in TINY if not o.startswith(("hardware=", "data.batch_size"))],
    "hardware=multinode_cpu",
    "data.batch_size=2",
    "logger=csv",
    "trainer.max_steps=12",
    "trainer.max_epochs=10",
    "checkpoint.every_n_steps=3",
    "checkpoint.keep_last=2",
    "optim.lr=5e-3",
]
LAUNCH_VARIABLES = ("MASTER_", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_", "TORCHELASTIC_", "GROUP_")
# Loaded by every Python process of a node (sitecustomize): records each file renamed onto a checkpoint's
# name, with the global rank of the process that wrote it.
RECORD_CHECKPOINT_WRITES = """
import os, sys

def _record(event, args):
    if event == "os.rename" and str(args[1]).endswith(".ckpt"):
        rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "?"
        with open(os.environ["CHECKPOINT_WRITES"], "a") as log:
            log.write(f"{rank} {os.path.basename(str(args[1]))}\\n")

sys.addaudithook(_record)
"""


def free_port(low: int = 0, high: int = 0) -> int:
    """A TCP port nothing listens on: any (the system's choice), or the first free one in [low, high)."""
    for port in range(low, high) if low else [0]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError(f"no free port in [{low}, {high})")


def node_environment(**variables: str) -> dict[str, str]:
    """This environment without any launcher's variables, one thread per process (two nodes share the cores),
    plus `variables`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARIABLES)}
    return {**clean, "OMP_NUM_THREADS": "1", **variables}


class Nodes:
    """The nodes of one run, each a process group of its own whose output goes to a file."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"node{len(self.processes)}.log", "w")  # noqa: SIM115 - the process writes it
        with log:
            process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def output(self, index: int) -> str:
        return (self.logs / f"node{index}.log").read_text()

    def wait_all(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        for index, process in enumerate(self.processes):
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert process.returncode == 0, f"node {index} failed:\n{self.output(index)[-3000:]}"

    def kill(self, process: subprocess.Popen) -> None:
        """The launcher and every process it started (torchrun starts each worker in a session of its own), as
        when a node dies."""
        for pid in [process.pid, *descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@contextlib.contextmanager
def nodes(logs: Path) -> Iterator[Nodes]:
    """Started nodes are always ended, whatever the test asserts."""
    started = Nodes(logs)
    try:
        yield started
    finally:
        for process in started.processes:
            started.kill(process)


def train_overrides(run_dir: Path, *extra: str) -> list[str]:
    return ["train", *TWO_NODES, *extra, f"hydra.run.dir={run_dir}"]


def torchrun(cluster: Nodes, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> list:
    """Both nodes through the documented torchrun command, node 0 on 127.0.0.1."""
    port = free_port()
    return [
        cluster.start(
            [
                str(BIN / "torchrun"),
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                str(BIN / "invoke"),
                *train_overrides(run_dir, *extra),
            ],
            node_environment(**(env or {})),
        )
        for rank in (0, 1)
    ]


def slurm_task(rank: int, job_id: str, nodes_in_job: int = 2) -> dict[str, str]:
    """What `srun` sets for task `rank` of a job of one task per node (Lightning's SLURMEnvironment reads it):
    the rendezvous is at the first node of SLURM_NODELIST, on port 15000 + the job id's last four digits."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "onestop-train",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_NNODES": str(nodes_in_job),
        "SLURM_NTASKS": str(nodes_in_job),
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": str(rank),
        "SLURM_NODEID": str(rank),
        "SLURM_LOCALID": "0",
    }


def slurm_job_id() -> str:
    """A job id whose rendezvous port (15000 + its last four digits) is free now."""
    return f"7{free_port(15000, 25000) - 15000:04d}"


def srun(cluster: Nodes, run_dir: Path, *extra: str) -> list:
    """Both nodes as `srun invoke train ...` starts them: one task per node, the same command, SLURM's variables."""
    job_id = slurm_job_id()
    return [
        cluster.start(
            [str(BIN / "invoke"), *train_overrides(run_dir, *extra)], node_environment(**slurm_task(rank, job_id))
        )
        for rank in (0, 1)
    ]


def wait_for_checkpoint(cluster: Nodes, checkpoint: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert cluster.processes[0].poll() is None, (
            f"node 0 ended before {checkpoint.name}:\n{cluster.output(0)[-3000:]}"
        )
        assert time.monotonic() < deadline, f"no {checkpoint.name} after {timeout:g} s"
        time.sleep(0.01)


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_bitwise_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory) -> Path:
    """Two torchrun nodes, trained unbroken to the end; every checkpoint write recorded with its rank."""
    root = tmp_path_factory.mktemp("torchrun")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(RECORD_CHECKPOINT_WRITES)
    path = os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")]))
    with nodes(root / "logs") as cluster:
        torchrun(cluster, root / "run", env={"PYTHONPATH": path, "CHECKPOINT_WRITES": str(root / "writes.txt")})
        cluster.wait_all()
    return root


@pytest.mark.slow
def test_two_torchrun_nodes_train_one_model(torchrun_run):
    done = metrics(torchrun_run / "run")
    assert done["world_size"] == 2 and done["steps"] == 12
    assert done["replicas_in_sync"] is True  # both nodes end with the same weights
    assert done["train_losses"][-1] < done["train_losses"][0]


@pytest.mark.slow
def test_only_global_rank_0_writes_checkpoints(torchrun_run):
    writes = (torchrun_run / "writes.txt").read_text().split("\n")[:-1]
    steps = [f"step{step:07d}.ckpt" for step in (3, 6, 9, 12)]
    assert sorted(writes) == sorted([f"0 {name}" for name in steps] + ["0 last.ckpt"] * 4)
    kept = sorted(p.name for p in (torchrun_run / "run" / "checkpoints").iterdir())
    assert kept == ["last.ckpt", "step0000009.ckpt", "step0000012.ckpt"]


@pytest.mark.slow
def test_srun_tasks_killed_mid_run_resume_and_end_where_the_unbroken_torchrun_run_ends(tmp_path, torchrun_run):
    """`srun invoke train ...` trains as the torchrun nodes do: a node dies (a task killed with everything it
    started), the other stops instead of waiting in a collective, and both started again with `resume=auto`
    end bitwise where the unbroken run ends."""
    run_dir = tmp_path / "run"
    with nodes(tmp_path / "killed") as cluster:
        first, second = srun(cluster, run_dir)
        wait_for_checkpoint(cluster, run_dir / "checkpoints" / "step0000003.ckpt")
        cluster.kill(second)
        assert not (run_dir / "metrics.json").exists(), "the run finished before node 1 was killed"
        started = time.monotonic()
        first.wait(timeout=120)
        stopped_after = time.monotonic() - started
        assert first.returncode != 0
    with nodes(tmp_path / "resumed") as cluster:
        srun(cluster, run_dir, "resume=auto")
        cluster.wait_all()
    resumed = metrics(run_dir)
    assert resumed["world_size"] == 2 and resumed["resumed_from"].endswith(".ckpt")
    assert_bitwise_equal(adapter(run_dir), adapter(torchrun_run / "run"))
    assert stopped_after < 30


@pytest.mark.slow
def test_fsdp_shards_across_two_nodes_and_ends_where_ddp_ends(tmp_path, torchrun_run):
    with nodes(tmp_path / "logs") as cluster:
        torchrun(cluster, tmp_path / "run", "hardware.strategy=fsdp")
        cluster.wait_all()
    sharded, replicated = metrics(tmp_path / "run"), metrics(torchrun_run / "run")
    total = sharded["total_params"]
    assert len(sharded["parameters_per_rank"]) == 2 and max(sharded["parameters_per_rank"]) < 0.6 * total
    assert sharded["train_losses"] == pytest.approx(replicated["train_losses"], rel=1e-6)
    expected = adapter(torchrun_run / "run")
    for name, weight in adapter(tmp_path / "run").items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_node_that_cannot_meet_the_others_stops_in_one_line(tmp_path):
    """Node 1 of a SLURM job whose node 0 never started, and node 0 of a launch through Lightning's own variables
    (MASTER_ADDR, MASTER_PORT, NODE_RANK) whose node 1 never comes: each stops in its timeout, in one line.
    Under torchrun, torchrun meets the other nodes before training starts; `--rdzv-conf=timeout=N` bounds
    that, and its error (a traceback) ends naming the address."""
    job_id = slurm_job_id()
    slurm_port, lonely_port, torchrun_port = 15000 + int(job_id[-4:]), free_port(), free_port()
    timeout = ["hardware.rendezvous_timeout_s=3"]
    with nodes(tmp_path / "logs") as cluster:
        started = time.monotonic()
        cluster.start(
            [str(BIN / "invoke"), *train_overrides(tmp_path / "worker", *timeout)],
            node_environment(**slurm_task(1, job_id)),
        )
        cluster.start(
            [str(BIN / "invoke"), *train_overrides(tmp_path / "master", *timeout)],
            node_environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(lonely_port), NODE_RANK="0"),
        )
        cluster.start(
            [
                str(BIN / "torchrun"),
                "--nnodes=2",
                "--node_rank=1",
                "--master_addr=127.0.0.1",
                f"--master_port={torchrun_port}",
                "--rdzv-conf=timeout=3",
                str(BIN / "invoke"),
                *train_overrides(tmp_path / "torchrun"),
            ],
            node_environment(),
        )
        for process in cluster.processes:
            process.wait(timeout=120)
        took = time.monotonic() - started
    assert all(process.returncode != 0 for process in cluster.processes)
    worker, master, torchrun_node = (cluster.output(i).strip().splitlines()[-1] for i in range(3))
    assert worker == (
        f"onestop train: error: hardware.rendezvous_timeout_s=3: rank 1 of 2 could not reach the rendezvous at "
        f"127.0.0.1:{slurm_port}; start node 0 there (or correct MASTER_ADDR / MASTER_PORT), check the firewall"
    )
    assert master.startswith("onestop train: error: hardware.rendezvous_timeout_s=3: rank 0 waited at the rendezvous ")
    assert f" 127.0.0.1:{lonely_port} " in master
    for index in (0, 1):
        assert "Traceback" not in cluster.output(index) and "frame #" not in cluster.output(index)
    assert f"(127.0.0.1, {torchrun_port})" in torchrun_node and "timed out" in torchrun_node
    assert took < 90  # the default, 600 s, would have waited ten minutes


def test_the_rendezvous_limit_leaves_the_collectives_their_timeout(monkeypatch):
    """After meeting within `rendezvous_timeout_s`, the process group keeps Lightning's 30 minutes for every
    collective: a rank may wait long at a barrier while rank 0 writes a big checkpoint."""
    for name in [n for n in os.environ if n.startswith(LAUNCH_VARIABLES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    strategy = TimedDDPStrategy(
        rendezvous_timeout_s=5,
        accelerator=CPUAccelerator(),
        parallel_devices=[torch.device("cpu")],
        cluster_environment=LightningEnvironment(),
        process_group_backend="gloo",
    )
    try:
        strategy.setup_distributed()
        gloo = torch.distributed.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        assert gloo.options._timeout == strategy._timeout == timedelta(minutes=30)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
