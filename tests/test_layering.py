"""The layering of docs/architecture.md: imports (inside functions too) only go downward."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: (module prefix, rank): a module may import modules of its own rank or below
LAYERS = [
    ("prunelens.errors", 0), ("prunelens.io", 0), ("prunelens.options", 0), ("prunelens._compat", 0),
    ("prunelens.distributed", 0),
    ("prunelens.models", 1),
    ("prunelens.data", 2),
    ("prunelens.config", 3),
    ("prunelens.runfolder", 4),
    ("prunelens.results", 5), ("prunelens.stats", 5),
    ("prunelens.pruning", 6),
    ("prunelens.suite", 7),
    ("prunelens.accuracy", 8), ("prunelens.explain", 8), ("prunelens.discovery", 8),
    ("prunelens.alignment", 8), ("prunelens.transfer", 8),
    ("prunelens.analysis.schedules", 9), ("prunelens.analysis", 8),
    ("prunelens.evaluate", 9), ("prunelens.report", 9),
    ("prunelens.cli", 10), ("prunelens.__main__", 10),
]


def rank(module: str) -> int | None:
    if module == "prunelens":
        return 0  # the package itself holds only the version
    return next((r for prefix, r in LAYERS if module == prefix or module.startswith(prefix + ".")), None)


def imports(path: Path, module: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("prunelens")}


def test_every_module_has_a_layer():
    modules = [".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
               for p in SRC.rglob("*.py")]
    assert [m for m in modules if rank(m) is None] == []


def test_imports_only_go_down():
    upward = []
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for target in imports(path, module):
            if rank(target) is not None and rank(target) > rank(module):
                upward.append(f"{module} -> {target}")
    assert upward == []
