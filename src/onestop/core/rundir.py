"""A training run's directory, and the only code that knows its layout.

    RUN/
      config.yaml                the resolved config (what `invoke eval/export/deploy run_dir=RUN` read)
      recipe.yaml                the config with every option written out, plus provenance
      metrics.json               losses, validation history, throughput, data report
      data_report.json           what happened to every record; data_lengths.png, their lengths
      run.lock                   while `invoke train` writes here: its pid and host (a second run refuses)
      train.log                  a run started from `invoke ui`: its command, then its output
      checkpoints/               last.ckpt, stepNNNNNNN.ckpt, sigterm.ckpt / sigint.ckpt (directories under DeepSpeed)
      adapter/                   adapter methods: the PEFT adapter and the tokenizer with its chat template
      model/                     full-weight methods: a plain transformers model directory
      export-merged/             `invoke export`: the adapter folded into its base (what servers load)
      export-adapter/            `invoke export format=adapter`
                                 (each with onestop-source.json: the fingerprint of the weights it was made from)
      eval/TIME/results.json     each `invoke eval run_dir=RUN`
      wandb/                     the W&B run
      demo.json, objective.json  the demo's before/after report; a sweep trial's objective

Training writes through `RunDir`; evaluation, export, deployment, sweeps, recipes and benchmarks read
through it, so they agree on what a finished run holds. A directory holds one run: training into one that
holds a run already refuses, unless it resumes that run or is told to overwrite it (`RunDir.claim`).
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.files import reported_as_user_error, write_bytes_atomic, write_json, write_text_atomic
from onestop.core.secrets import redact

SOURCE_FILE = "onestop-source.json"
"""In a directory made from trained weights (a merged export, a serving copy): the fingerprint of what it was
made from. A copy whose fingerprint differs from its source's now is stale: it is made again, never served."""

RESULTS_FILE = "results.json"
"""An evaluation's record (scores, config, model identity, samples), in the evaluation's output directory:
RUN/eval/TIME/ for a run's evaluation, runs/eval/TIME/ for another."""

# What a training run leaves in its directory; any of them means the directory is a run's.
_RUN_ARTEFACTS = ("config.yaml", "checkpoints", "adapter", "model", "metrics.json", "recipe.yaml")
# What a start writes before its first step; a directory holding only these trained nothing.
_WRITTEN_BEFORE_TRAINING = {"config.yaml"}


def job_config(cfg: DictConfig) -> dict:
    """The resolved config of a run, without Hydra's own node and with credentials redacted: what config.yaml
    holds, and what loggers and recipes receive."""
    return redact(
        {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items()
            if k != "hydra"
        }
    )


@dataclass(frozen=True)
class Weights:
    """What a finished run trained: `adapter` (a PEFT adapter on the run's base) or `model` (full weights)."""

    kind: str
    path: Path

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"


class RunDir:
    """One training run's directory: where each artefact lies, and reading and writing them."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()

    @classmethod
    def existing(cls, path: str | Path, key: str = "run_dir") -> "RunDir":
        """A directory `invoke train` wrote; the error names the config `key` that pointed at it."""
        run = cls(path)
        if not run.config_file.is_file():
            raise OnestopError(
                f"config key '{key}': {path} is not a training run (no config.yaml); "
                "expected a directory `invoke train` wrote"
            )
        return run

    @classmethod
    def owning(cls, results_file: Path) -> "RunDir | None":
        """The run an evaluation's results.json belongs to (RUN/eval/TIME/results.json), or None."""
        candidate = cls(Path(results_file).parent.parent.parent)
        inside = Path(results_file).parent.parent == candidate.eval_dir
        return candidate if inside and candidate.config_file.is_file() else None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # Where each artefact lies.
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def data_report_file(self) -> Path:
        return self.path / "data_report.json"

    @property
    def data_lengths_file(self) -> Path:
        return self.path / "data_lengths.png"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def stop_checkpoint(self, signal_name: str) -> Path:
        """The checkpoint a run stopped by a signal (SIGTERM, SIGINT) saves: checkpoints/sigterm.ckpt, sigint.ckpt."""
        return self.checkpoints_dir / f"{signal_name.lower()}.ckpt"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    @property
    def log_file(self) -> Path:
        """train.log: the output of a run started from `invoke ui`, its `invoke train` command on the first line."""
        return self.path / "train.log"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def export_dir(self, export_format: str = "merged") -> Path:
        """Where `invoke export format=FORMAT` writes (merged or adapter; composition checks the value)."""
        return self.path / f"export-{export_format}"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def wandb_dir(self) -> Path:
        return self.path / "wandb"

    @property
    def demo_file(self) -> Path:
        return self.path / "demo.json"

    @property
    def objective_file(self) -> Path:
        return self.path / "objective.json"

    def weights_dir(self, adapter: bool) -> Path:
        """Where training saves what it trained: adapter/ for an adapter, model/ for full weights."""
        return self.adapter_dir if adapter else self.model_dir

    # Reading.
    def config(self) -> DictConfig:
        return OmegaConf.load(self.config_file)

    def model_config(self) -> DictConfig:
        return self.config().model

    def is_reward_model(self) -> bool:
        """Whether the run trained a reward model (`stage: rm` in its config): a score head on its base, not a
        language model, so it is scored with eval=rm and never generates or is served as a chat model."""
        return self.config().get("stage") == "rm"

    def metrics(self) -> dict | None:
        return _read_json(self.metrics_file)

    def objective(self) -> dict | None:
        return _read_json(self.objective_file)

    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    def has_model(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    def weights(self) -> Weights:
        """The run's trained weights; a run that never finished has none, and says so."""
        if self.has_adapter():
            return Weights("adapter", self.adapter_dir)
        if self.has_model():
            return Weights("model", self.model_dir)
        raise OnestopError(f"run_dir={self.path}: neither adapter/ nor model/ found; did the run finish?")

    def has_export(self, export_format: str = "merged") -> bool:
        marker = "config.json" if export_format == "merged" else "adapter_config.json"
        return (self.export_dir(export_format) / marker).is_file()

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first: files, or directories under DeepSpeed, renamed into place whole."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.glob("*.ckpt") if not p.name.startswith(".")]
        return sorted(found, key=lambda p: p.stat().st_mtime_ns)

    def writer(self) -> tuple[int, str] | None:
        """(pid, host) of the live run writing here now, or None; a lock left by a process that has ended
        counts as none (on another host a lock always counts: its process cannot be checked from here)."""
        holder = _lock_holder(self.lock_file)
        if holder is None:
            return None
        pid, host = holder
        return holder if host != socket.gethostname() or _alive(pid) else None

    def wandb_run_id(self) -> str | None:
        """The W&B run id training logged to: the suffix of wandb/*run-DATE-ID/."""
        runs = sorted(self.wandb_dir.glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
        return runs[-1].name.rsplit("-", 1)[-1] if runs else None

    def eval_results(self) -> list[Path]:
        """results.json of every evaluation of this run, oldest first."""
        return sorted(self.eval_dir.glob(f"*/{RESULTS_FILE}"), key=lambda p: p.stat().st_mtime)

    def recipe_or_config(self) -> Path | None:
        """recipe.yaml, else config.yaml (a run that stopped before writing its recipe), else None."""
        return next((p for p in (self.recipe_file, self.config_file) if p.is_file()), None)

    # Writing; each file appears whole.
    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the directory for one training run: another run pointed at it meanwhile refuses, naming this one.

        run.lock holds the holder's pid and host; a lock whose process is gone (kill -9, a crash) is taken
        over. A directory made here is removed again if the run leaves nothing else in it (a config, data
        or model error), so a failed start leaves no half-made run behind.
        """
        made = not self.path.exists()
        self._take_lock()
        try:
            yield self
        finally:
            if _lock_holder(self.lock_file) == (os.getpid(), socket.gethostname()):
                self.lock_file.unlink(missing_ok=True)
            if made and self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()

    def _take_lock(self) -> None:
        writable = "set hydra.run.dir to a directory you can write"
        with reported_as_user_error(self.path, writable):
            self.path.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".run.lock.", dir=self.path)
        try:
            with reported_as_user_error(self.path, writable):
                with os.fdopen(fd, "w") as handle:
                    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            for _ in range(3):
                try:
                    os.link(tmp, self.lock_file)  # fails if the lock exists; the lock appears with its content
                    return
                except FileExistsError:
                    pass
                except OSError:  # a file system without hard links (some network and FUSE mounts)
                    if _create_exclusively(self.lock_file, Path(tmp).read_text()):
                        return
                holder = _lock_holder(self.lock_file)
                if holder is None:
                    continue  # released in between
                pid, host = holder
                if host != socket.gethostname() or _alive(pid):
                    raise OnestopError(
                        f"hydra.run.dir={self.path}: another run (pid {pid} on {host}) is writing there; wait for "
                        f"it to end or choose another hydra.run.dir (if that run is gone, delete {self.lock_file})"
                    )
                print(f"{self.lock_file}: taking over the lock of pid {pid}, which has ended", flush=True)
                self.lock_file.unlink(missing_ok=True)
            raise OnestopError(f"hydra.run.dir={self.path}: other runs keep taking its lock; choose another directory")
        finally:
            os.unlink(tmp)

    def holdings(self) -> list[str]:
        """What of an earlier training run the directory holds (`config.yaml`, `checkpoints/`, ...); [] if none."""
        held = []
        for name in _RUN_ARTEFACTS:
            path = self.path / name
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                held.append(f"{name}/" if path.is_dir() else name)
        return held

    def claim(self, resume: str | None, overwrite: bool) -> None:
        """Make the directory ready for a new run, holding its lock, before any work: a directory that holds a
        run already refuses, unless `resume` continues that run or `overwrite` removes it first.

        Without this, a second run would replace the adapter and metrics, keep the first run's checkpoints and
        logger files beside its own, and leave exports of the first run's weights to be served as its own.
        """
        inside = resume == "auto" or (bool(resume) and self.path in Path(resume).expanduser().absolute().parents)
        if overwrite and inside:
            raise OnestopError(
                f"overwrite=true with resume={resume}: resuming continues the run in {self.path}, overwriting "
                "removes it; choose one"
            )
        held = self.holdings()
        if not held or (resume and not overwrite):
            return
        if not overwrite and set(held) <= _WRITTEN_BEFORE_TRAINING:
            # A start that stopped before its first step (a node that never met the others, a data error on
            # another rank) trained nothing: this run takes its place rather than asking for overwrite=true.
            print(f"{self.path}: an earlier start here trained nothing ({', '.join(held)}); starting over", flush=True)
            for name in held:
                _remove(self.path / name.rstrip("/"))
            return
        if not overwrite:
            raise OnestopError(
                f"hydra.run.dir={self.path}: already holds a run ({', '.join(held)}); continue it with resume=auto, "
                "replace it with overwrite=true, or choose another hydra.run.dir"
            )
        print(f"overwrite=true: removing the earlier run in {self.path}", flush=True)
        with reported_as_user_error(self.path, "set hydra.run.dir to a directory you can write"):
            for entry in self.path.iterdir():
                if not self._kept_on_overwrite(entry):
                    _remove(entry)

    def _kept_on_overwrite(self, entry: Path) -> bool:
        # The lock is this run's; .hydra/ is Hydra's record of this very job (a sweep trial's overrides); a
        # train.log this process writes to is the log of this run, started from `invoke ui`.
        return entry == self.lock_file or entry.name == ".hydra" or (entry == self.log_file and _is_our_output(entry))

    def weights_fingerprint(self) -> str:
        """sha256 of the run's trained weights (every file of adapter/ or model/, the tokenizer included) and of
        the model it trained (config.yaml's `model`): what anything made from the run is keyed to."""
        weights = self.weights()
        model = OmegaConf.to_container(self.model_config(), resolve=True)
        digest = hashlib.sha256(f"{weights.kind}\0{tree_digest(weights.path)}\0".encode())
        digest.update(json.dumps(model, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, cfg: DictConfig) -> None:
        write_text_atomic(self.config_file, OmegaConf.to_yaml(job_config(cfg)))

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_file, metrics)

    def write_recipe(self, text: str) -> Path:
        write_text_atomic(self.recipe_file, text)
        return self.recipe_file

    def write_data_report(self, report: dict, lengths_png: Path | None = None) -> None:
        write_text_atomic(self.data_report_file, json.dumps(report, indent=2, ensure_ascii=False))
        if lengths_png is not None and lengths_png.is_file():
            write_bytes_atomic(self.data_lengths_file, lengths_png.read_bytes())

    def write_demo_report(self, report: dict) -> None:
        write_json(self.demo_file, report)

    def write_objective(self, record: dict) -> None:
        write_json(self.objective_file, record)


def results_file(output_dir: str | Path) -> Path:
    """The results.json of the evaluation written to `output_dir`."""
    return Path(output_dir) / RESULTS_FILE


def write_results_file(output_dir: str | Path, record: dict) -> Path:
    """The one writer of results.json: `record` as JSON (a value JSON has no type for as its text), atomically."""
    path = results_file(output_dir)
    write_json(path, json.loads(json.dumps(record, default=str)))
    return path


def read_results(output_dir: str | Path) -> dict:
    """The results.json of the evaluation written to `output_dir`."""
    return json.loads(results_file(output_dir).read_text())


def tree_digest(root: Path) -> str:
    """sha256 over every file under `root` (relative names, sizes and contents); SOURCE_FILE is left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name != SOURCE_FILE):
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def made_from(directory: Path) -> str | None:
    """The fingerprint a derived directory records (SOURCE_FILE), or None when it records none."""
    recorded = _read_json(Path(directory) / SOURCE_FILE)
    return recorded.get("fingerprint") if isinstance(recorded, dict) else None


def record_source(directory: Path, fingerprint: str, **facts) -> None:
    """Write SOURCE_FILE into `directory` (a staging directory, before it becomes the derived one)."""
    write_json(Path(directory) / SOURCE_FILE, {"fingerprint": fingerprint, **facts})


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _is_our_output(path: Path) -> bool:
    """Whether this process's standard output or error is the file at `path`."""
    try:
        here = path.stat()
    except OSError:
        return False
    for descriptor in (1, 2):
        try:
            stream = os.fstat(descriptor)
        except OSError:  # closed
            continue
        if (stream.st_dev, stream.st_ino) == (here.st_dev, here.st_ino):
            return True
    return False


def _create_exclusively(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it exists; whether it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return True


def _lock_holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when there is none."""
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except FileNotFoundError:
        return None
    except ValueError:  # not written by onestop: nobody holds it
        return (0, socket.gethostname())


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
