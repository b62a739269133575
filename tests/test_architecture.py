"""The package layout keeps the pipeline's one direction (docs/architecture.md).

Every import inside mpq/ (module level or inside a function) is read with `ast`; a module may import
its own stage and the stages before it, never a later one, and the module graph has no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "mpq"

# stage -> rank; a module may import only stages of lower rank, or its own stage.
STAGES = {
    "errors": 0,  # shared by every stage: errors, then files, progress, versions and the cache
    "params": 0.1,  # the config objects' and verbs' parameter constraints, checked in one place (mpq.params)
    "files": 0.2,
    "progress": 0.2,
    "versions": 0.2,
    "device": 0.2,
    "memory": 0.2,  # peak memory per phase (mpq.memory)
    "quiet": 0.2,  # the known import-time lines of torch and torchao, dropped (mpq.quiet)
    "cache": 0.5,
    "inputs": 1,
    "models": 1.5,  # the built-in model (mpq.models.efficientnet_lite0) and its data
    "quant": 2,
    "sensitivity": 3,
    "cost": 4,
    "plan": 5,
    "solver": 6,
    "verify": 7,
    "export": 8,
    "report": 8,
    "api": 9,
    "cli": 10,
}
MAX_LINES = 400
MAX_COLUMNS = 120  # pyproject.toml's ruff line-length
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the mpq package itself (the public names)


def imports(path: Path) -> set[str]:
    """Every mpq module that `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mpq.") or a.name == "mpq"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and (node.module == "mpq" or node.module.startswith("mpq."))
        ):
            found.add(node.module)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_stage_is_ranked():
    unranked = {stage(m) for m in modules() if stage(m) is not None} - set(STAGES)
    assert not unranked, f"give these packages/modules a stage in STAGES: {sorted(unranked)}"


def test_no_import_from_a_later_stage():
    backwards = []
    for name, path in modules().items():
        own = stage(name)
        if own is None:
            continue
        for target in imports(path):
            theirs = stage(target)
            if theirs is None:
                if own != "cli":  # the command line is the one user of the public names
                    backwards.append(f"{name} imports the top-level mpq package")
            elif theirs != own and STAGES[theirs] >= STAGES[own]:
                backwards.append(f"{name} ({own}) imports {target} ({theirs})")
    assert not backwards, "\n".join(backwards)


def test_no_import_cycle():
    graph = nx.DiGraph()
    known = modules()
    for name, path in known.items():
        for target in imports(path):
            if target in known and target != name:
                graph.add_edge(name, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_modules_are_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_lines_are_narrow():
    wide = [
        f"{name}:{i} ({len(line)} columns)"
        for name, path in modules().items()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if len(line) > MAX_COLUMNS
    ]
    assert not wide, f"lines over {MAX_COLUMNS} columns: {wide}"


def test_functions_are_short():
    long = [
        f"{name}:{node.lineno} {node.name} ({n} lines)"
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


PRINTS = re.compile(r"\bprint\(|sys\.stderr|sys\.stdout")


def test_only_cli_and_progress_write_to_the_terminal():
    writers = [
        f"{name}:{i}"
        for name, path in modules().items()
        if not (name.startswith("mpq.cli") or name == "mpq.progress")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if PRINTS.search(line)
    ]
    assert not writers, f"library modules write to the terminal (use mpq.progress): {writers}"
