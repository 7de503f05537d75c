"""The house: every module imports on its own, ravlm_core has no import cycle and never imports a later stage or
Prefect, and no file of the library, the tasks or the flows is past a sitting (400 lines)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "ravlm_core"
# The pipeline's order: a module may import its own stage and earlier ones, never a later one. The foundation is
# ravlm_core's top-level modules (config, errors, locations, store, imaging, ...).
STAGES = ("foundation", "ingest", "encoders", "embed", "index", "retrieval", "generators", "jobs", "evaluate", "query")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(*packages: str) -> dict[str, Path]:
    """Every module of these packages; a `__main__` is a program (importing it runs it), not a module."""
    return {module_name(path): path for package in packages for path in sorted((ROOT / package).rglob("*.py"))
            if path.stem != "__main__"}


def stage_of(module: str) -> str:
    """`foundation` for ravlm_core and its top-level modules, else the sub-package's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ROOT / LIBRARY / parts[1]).is_dir() else "foundation"


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module `module` imports, wherever the import stands (inside functions too), relative ones resolved;
    `from package import name` counts as importing package.name when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def library_graph() -> dict[str, set[str]]:
    """ravlm_core module -> the ravlm_core modules it imports."""
    modules = modules_of(LIBRARY)
    known = set(modules)
    return {module: {target for target in imports_of(module, path, known) if target in known and target != module}
            for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


IMPORT_ALL = """
import importlib, json, sys, traceback
failed, prefect_after_library = {}, None
for name in json.loads(sys.argv[1]):
    if prefect_after_library is None and not name.startswith("ravlm_core"):
        prefect_after_library = "prefect" in sys.modules
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps({"failed": failed, "prefect_after_library": prefect_after_library}))
"""


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules_of(LIBRARY)) + sorted(modules_of("tasks", "flows"))  # the library first, alone
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, json.dumps(names)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["failed"], "modules that fail to import:\n" + "\n".join(
        f"{name}: {trace}" for name, trace in result["failed"].items())
    assert result["prefect_after_library"] is False, "importing every ravlm_core module imported prefect"


def test_ravlm_core_has_no_import_cycle():
    found = cycles(library_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(component) for component in found)


def test_the_foundation_has_no_import_cycle():
    graph = library_graph()
    foundation = {m: {t for t in targets if stage_of(t) == "foundation"}
                  for m, targets in graph.items() if stage_of(m) == "foundation"}
    found = cycles(foundation)
    assert not found, "import cycles in the foundation:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_ravlm_core_module_belongs_to_a_known_stage():
    unknown = sorted({stage_of(module) for module in library_graph()} - set(STAGES))
    assert not unknown, f"sub-packages missing from STAGES (place them in the pipeline's order): {unknown}"


def test_no_module_imports_a_later_stage():
    rank = {stage: n for n, stage in enumerate(STAGES)}
    backwards = sorted(
        f"{module} ({stage_of(module)}) imports {target} ({stage_of(target)})"
        for module, targets in library_graph().items() for target in targets
        if rank.get(stage_of(target), -1) > rank.get(stage_of(module), len(STAGES)))
    assert not backwards, "imports of a later stage:\n" + "\n".join(backwards)


def test_ravlm_core_never_imports_prefect():
    modules = modules_of(LIBRARY)
    known = set(modules)
    offenders = sorted(module for module, path in modules.items()
                       if any(t == "prefect" or t.startswith("prefect.") for t in imports_of(module, path, known)))
    assert not offenders, f"ravlm_core modules importing prefect: {offenders}"


def test_no_file_is_over_400_lines():
    long = sorted((len(path.read_text().splitlines()), str(path.relative_to(ROOT)))
                  for package in (LIBRARY, "flows", "tasks") for path in (ROOT / package).rglob("*.py"))
    over = [f"{name}: {lines} lines" for lines, name in long if lines > MAX_LINES]
    assert not over, f"files over {MAX_LINES} lines:\n" + "\n".join(over)
