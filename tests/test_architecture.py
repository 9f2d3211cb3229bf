"""The shape of zoo_core: modules import on their own, no import loops, one Zoo, light listings."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "zoo_core"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """zoo_core modules that ``name`` imports anywhere in its source (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_the_module_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages re-export; not a loop
    graph = {n: {t for t in targets if not t.startswith(n + ".")} for n, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import loop: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_every_module_imports_on_its_own():
    """Each zoo_core module imported first, with no other zoo_core module loaded before it (one fresh
    interpreter; the zoo's modules are forgotten between imports, so a hidden loop shows)."""
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    code = ("import importlib, sys, traceback\nfailed = []\n"
            f"for name in {names!r}:\n"
            "    for loaded in [m for m in sys.modules if m == 'zoo_core' or m.startswith(('zoo_core.', 'zoo_'))]:\n"
            "        del sys.modules[loaded]\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc().splitlines()[-1])\n"
            "print('FAILED', failed)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FAILED []" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_no_global_plugin_catalogue():
    """Everything takes the Zoo; the only construction of the catalogue is the Zoo's own."""
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in CORE.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "get_plugins(" in line or re.search(r"\b_PLUGINS\b", line)]
    assert offenders == []
    constructions = [str(p.relative_to(REPO)) for p in CORE.rglob("*.py") if "ZooPlugins(" in p.read_text()
                     and p.name != "plugins.py"]
    assert constructions == ["zoo_core/zoo.py"]


@pytest.mark.parametrize("command", [["--help"], ["list"], ["plugins"]])
def test_listing_commands_import_no_torch(command):
    """zoo --help, zoo list and zoo plugins describe families from registered data, not models."""
    code = ("import sys\nfrom zoo_core.cli import main\n"
            "try:\n    code = main(%r)\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'wandb') if m in sys.modules)\n"
            "print('HEAVY', heavy, code, file=sys.stderr)\n") % (command,)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    last = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY")]
    assert last and last[-1] == "HEAVY [] 0", proc.stderr[-2000:]
