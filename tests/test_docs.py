"""The documentation keeps up with the code: every option of every `mpq` subcommand is described in
docs/cli.md under that subcommand's heading, the README stays short, its links resolve, and its test
command is the one CI runs (.ci/run)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mpq.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
CI_RUN = ROOT / ".ci" / "run"
README_LIMIT = 12_000
CI_MARKER = "# --- the README's second command, verbatim from here on ---"
VENV_PREFIX = "python3 -m venv .venv && . .venv/bin/activate && "
LINK = re.compile(r"\]\(([^)\s]+)\)")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def sections(text: str) -> dict[str, str]:
    """`## heading` -> the text up to the next `## ` heading."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def mentions(text: str, option: str) -> bool:
    # whole option strings only: --keep is not found in --keep-first, --budget not in --also-budget
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_every_cli_option_is_documented_under_its_subcommand():
    doc = sections(CLI_DOC.read_text())
    commands = subcommands()
    assert {"search", "pareto", "solve", "sensitivity", "verify", "profile", "export"} <= set(commands)
    missing = []
    for name, sub in commands.items():
        section = doc.get(f"mpq {name}")
        if section is None:
            missing.append(f"docs/cli.md has no section '## mpq {name}'")
            continue
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                if not mentions(section, option):
                    missing.append(f"mpq {name} {option}")
    assert not missing, "options not described in docs/cli.md:\n" + "\n".join(missing)


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes; keep it at most {README_LIMIT:,} (move detail to docs/)"


def code_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)]


def test_readme_opens_with_the_two_commands_ci_runs():
    text = README.read_text()
    before_first_section = text.split("\n## ", 1)[0]
    blocks = code_blocks(before_first_section)
    assert len(blocks) >= 2, "README.md must open with the install-and-run command and the test command"
    run_command, test_command = blocks[0], blocks[1]
    assert run_command == VENV_PREFIX + "pip install torch==2.13.0 && pip install . && mpq search --budget 4MB"
    ci_lines = CI_RUN.read_text().splitlines()
    assert CI_MARKER in ci_lines, f".ci/run lost its marker line {CI_MARKER!r}"
    ci_command = ci_lines[ci_lines.index(CI_MARKER) + 1]
    # CI makes its own virtual environment, then runs the rest of the README's command verbatim
    assert test_command == VENV_PREFIX + ci_command, f"README test command:\n{test_command}\n.ci/run:\n{ci_command}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ +(.+?)\s*$", path.read_text(), flags=re.M)}


def broken_links(page: Path) -> list[str]:
    broken = []
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def test_readme_links_exist():
    linked = [t for t in LINK.findall(README.read_text()) if t.startswith("docs/")]
    assert linked, "README.md links to no docs page"
    assert "docs/cli.md" in linked and "reports/README.md" in LINK.findall(README.read_text())
    assert not broken_links(README), "\n".join(broken_links(README))


def test_docs_links_exist():
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "reports" / "README.md"]
    broken = [b for page in pages for b in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def named_in_architecture(path: Path, doc: str) -> bool:
    """Whether docs/architecture.md names the module: by its path (`mpq/cli/parser.py`), its module name
    (`mpq.cli.parser`), or by file name (`parser.py`) in its package's row of the package table."""
    relative = path.relative_to(ROOT).as_posix()
    dotted = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    if relative in doc or re.search(rf"`{re.escape(dotted)}`", doc):
        return True
    package = path.parent.relative_to(ROOT / "mpq").as_posix()
    rows = [line for line in doc.splitlines() if line.startswith("|")]
    if package == ".":  # a top-level module: any row that names it
        return any(f"`{path.name}`" in row for row in rows)
    return any(row.split("|")[1].strip().startswith(f"`{package}/`") and f"`{path.name}`" in row for row in rows)


def test_architecture_names_every_module():
    doc = ARCHITECTURE.read_text()
    missing = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "mpq").rglob("*.py"))
        if path.read_text().strip() and not named_in_architecture(path, doc)  # empty __init__.py files aside
    ]
    assert not missing, f"docs/architecture.md does not name these modules: {missing}"
