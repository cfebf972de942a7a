"""The layers import one way: research/ and benchmarks/ use the product, never the reverse, and
the service package (ser_worker) never reaches up into the command line (cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "ser_worker": ("research", "benchmarks", "cli"),
    "cli": ("research", "benchmarks"),
}


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, wherever it stands (functions
    too), relative ones resolved, and of importlib.import_module / __import__ calls with a
    literal name."""
    package = path.relative_to(root).parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package[: len(package) - node.level + 1])
                base = ".".join(part for part in (parent, node.module) if part)
            if base:
                found.append((node.lineno, base))
            else:  # `from ... import name` above the top package: the names are modules
                found += [(node.lineno, alias.name) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(package: str, root: Path = REPO) -> list[str]:
    return [
        f"{path.relative_to(root)}:{line} imports {module}"
        for path in sorted((root / package).rglob("*.py"))
        for line, module in imported_modules(path, root)
        if module.split(".")[0] in FORBIDDEN[package]
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(package):
    assert len(list((REPO / package).rglob("*.py"))) > 3
    assert violations(package) == []


def test_the_check_sees_every_kind_of_import(tmp_path):
    module = tmp_path / "ser_worker" / "service" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import numpy, research.report\n"
        "from benchmarks import run\n"
        "from . import store\n"
        "from ..labels import EMOTIONS\n"
        "def f():\n"
        "    from cli.main import cli\n"
        "    import importlib\n"
        "    importlib.import_module('research.tables')\n"
        "from ... import cli\n"
    )
    found = [v.split(" imports ")[1] for v in violations("ser_worker", tmp_path)]
    assert sorted(found) == ["benchmarks", "cli", "cli.main", "research.report", "research.tables"]
    resolved = [name for _, name in imported_modules(module, tmp_path)]
    assert "ser_worker.service" in resolved and "ser_worker.labels" in resolved
