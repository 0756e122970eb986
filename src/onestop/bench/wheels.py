"""`invoke bench.gpu.wheels`: the wheels a GPU machine without internet needs to run `invoke bench.gpu`.

invoke bench.gpu.wheels                       # .gpu-wheels/onestop and .gpu-wheels/lmdeploy, for CPython 3.12
invoke bench.gpu.wheels --python 3.11 --cuda 128

Only what the machine's image lacks is downloaded (never torch: onestop's torch>=2.4 keeps the image's), for
x86-64 Linux; source-only packages are built into pure-Python wheels here, and the CUDA libraries the machine
will not load are cut out of the two wheels that carry them, so everything fits one call's 64 MiB.
"""

import csv
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT

WHEELS_DIR = PROJECT_ROOT / ".gpu-wheels"

# Wheels a GPU machine without internet needs beside its image (torch, transformers, peft, lightning,
# accelerate, numpy, httpx, rich, ... already there). Unpinned names take the version installed here, so the
# box runs what this checkout was tested with; the others are pinned to the versions docs/benchmarks.md lists.
ONESTOP_WHEELS = (
    "hydra-core", "omegaconf", "antlr4-python3-runtime", "invoke", "datasets", "dill", "multiprocess",
    "openai", "jiter", "distro", "sniffio", "httpx2", "httpcore2", "truststore",
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "opentelemetry-api", "uvicorn",
    "liger-kernel==0.8.5", "bitsandbytes==0.50.2", "deepspeed", "hjson",
)  # fmt: skip
# LMDeploy and what its api_server with the PyTorch engine imports beyond the above; installed apart
# (deploy.wheels) as an overlay on the same Python.
LMDEPLOY_WHEELS = (
    "lmdeploy", "mmengine-lite==0.10.7", "yapf==0.43.0", "addict==2.4.0", "termcolor==3.3.0", "pybase64==1.5.1",
    "shortuuid==1.0.13", "pyzmq==27.3.0", "xgrammar==0.2.9", "apache-tvm-ffi==0.1.11",
    "partial-json-parser==0.2.1.1.post7", "platformdirs", "python-multipart",
)  # fmt: skip
LMDEPLOY_VERSION = "lmdeploy==0.18.0"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip


def pinned(name: str) -> str:
    """`name==version` installed here, or `name` as it is (already pinned, or not installed here)."""
    if "==" in name:
        return name
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def download_wheels(dest: str | None = None, python: str = "3.12", cuda: str = "130") -> dict:
    """Download (and build, for source-only packages) the wheels of ONESTOP_WHEELS into DEST/onestop and of
    LMDEPLOY_WHEELS into DEST/lmdeploy for CPython `python` on x86-64 Linux; strip the CUDA builds the
    box does not use (bitsandbytes: all but `cuda`; LMDeploy: the TurboMind library). Prints sizes."""
    root = Path(dest or WHEELS_DIR).absolute()
    sizes = {}
    for group, names in (("onestop", ONESTOP_WHEELS), ("lmdeploy", LMDEPLOY_WHEELS)):
        folder = root / group
        folder.mkdir(parents=True, exist_ok=True)
        wanted = [LMDEPLOY_VERSION if n == "lmdeploy" else pinned(n) for n in names]
        for requirement in wanted:
            _download(requirement, folder, python)
        sizes[group] = {}
    for wheel in (root / "onestop").glob("bitsandbytes-*.whl"):
        strip_wheel(wheel, lambda member: _foreign_native_library(member, cuda))
    for wheel in (root / "lmdeploy").glob("lmdeploy-*.whl"):
        strip_wheel(wheel, lambda member: "/turbomind/_turbomind" in member or member.endswith(".a"))
    total = 0
    for group in ("onestop", "lmdeploy"):
        for wheel in sorted((root / group).glob("*.whl")):
            sizes[group][wheel.name] = wheel.stat().st_size
            total += wheel.stat().st_size
    for group, wheels in sizes.items():
        print(f"{root / group}: {sum(wheels.values()) / 2**20:.1f} MiB")
        for name, size in wheels.items():
            print(f"  {size / 2**20:6.2f} MiB  {name}")
    print(f"total {total / 2**20:.1f} MiB (a lent machine takes 64 MiB per call with the repository)")
    outside = requirements_outside(sorted(root.glob("*/*.whl")), python)
    print(
        "required by these wheels and not carried (the GPU machine's own packages, or ones LMDeploy's PyTorch "
        "engine imports only for other models and backends): " + ", ".join(outside)
    )
    return sizes


def requirements_outside(wheels: list[Path], python: str = "3.12") -> list[str]:
    """Projects the wheels require (on x86-64 Linux, CPython `python`, no extras) that none of them provides."""
    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip
    carried, needed = set(), set()
    for wheel in wheels:
        carried.add(_canonical(wheel.name.split("-")[0]))
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            for line in archive.read(metadata).decode().splitlines():
                if line.startswith("Requires-Dist:"):
                    requirement = Requirement(line.split(":", 1)[1].strip())
                    if requirement.marker is None or requirement.marker.evaluate(environment):
                        needed.add(_canonical(requirement.name))
    return sorted(needed - carried)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _download(requirement: str, folder: Path, python: str) -> None:
    name = re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0]
    if any(_same_project(wheel.name, name) for wheel in folder.glob("*.whl")):
        return  # downloaded earlier: rerunning fetches only what is missing
    platforms = [arg for platform_tag in PLATFORMS for arg in ("--platform", platform_tag)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python, "--implementation", "cp", *platforms, "--platform", "any", "-d", str(folder),
               requirement]  # fmt: skip
    if subprocess.run(command, capture_output=True, text=True).returncode == 0:
        return
    # Published as a source archive only (deepspeed, antlr4-python3-runtime): build a pure-Python wheel here.
    with tempfile.TemporaryDirectory() as scratch:
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", scratch, requirement],
            capture_output=True,
            text=True,
            env={**os.environ, "DS_BUILD_OPS": "0"},  # DeepSpeed: no kernels now, they compile on first use
        )
        wheels = list(Path(scratch).glob("*.whl"))
        if built.returncode or not wheels or not wheels[0].name.endswith("-none-any.whl"):
            tail = (built.stderr or built.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OnestopError(f"bench.gpu.wheels: no wheel of {requirement} for Python {python}: {tail[0][:200]}")
        shutil.move(str(wheels[0]), folder / wheels[0].name)


def _same_project(wheel_name: str, name: str) -> bool:
    return _canonical(wheel_name.split("-")[0]) == _canonical(name)


def _foreign_native_library(member: str, cuda: str) -> bool:
    """bitsandbytes' libraries for other CUDA and ROCm versions than the box's (it loads libbitsandbytes_cudaXYZ
    for torch's CUDA version)."""
    found = re.search(r"libbitsandbytes_(cuda|rocm)(\d+)", member)
    return bool(found) and found.group(1) + found.group(2) != f"cuda{cuda}"


def strip_wheel(wheel: Path, drop) -> int:
    """Rewrite `wheel` without the members `drop` selects, its RECORD updated; returns bytes saved."""
    before = wheel.stat().st_size
    buffer = io.BytesIO()
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
        dropped = {info.filename for info in source.infolist() if drop(info.filename)}
        if not dropped:
            return 0
        for info in source.infolist():
            if info.filename in dropped:
                continue
            data = source.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = _record_without(data.decode(), dropped).encode()
            target.writestr(info, data)
    wheel.write_bytes(buffer.getvalue())
    return before - wheel.stat().st_size


def _record_without(record: str, dropped: set[str]) -> str:
    rows = [row for row in csv.reader(io.StringIO(record)) if row and row[0] not in dropped]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()
