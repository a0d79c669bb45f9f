"""The math core imports no ray; only the distributed layer (and tuning/) may (STYLE.md principle 1)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nri_ray"
MAY_IMPORT_RAY = {"distributed.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_distributed_layer_imports_ray():
    files = sorted(PACKAGE.glob("*.py"))
    assert files
    offenders = [p.name for p in files if p.name not in MAY_IMPORT_RAY and "ray" in imported_modules(p)]
    assert offenders == []


def test_package_never_imports_entry_points():
    for p in PACKAGE.glob("*.py"):
        assert not imported_modules(p) & {"tuning", "cluster", "benchmarks"}, p.name
