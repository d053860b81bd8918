"""The layering of docs/architecture.md: imports (inside functions too) only go downward."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: (module prefix, rank): a module may import modules of its own rank or below
LAYERS = [
    ("prunelens.errors", 0), ("prunelens.io", 0), ("prunelens.options", 0), ("prunelens._compat", 0),
    ("prunelens.distributed", 0),
    ("prunelens.models", 1), ("prunelens.data", 1),
    ("prunelens.config", 2),
    ("prunelens.runfolder", 3),
    ("prunelens.results", 4), ("prunelens.stats", 4),
    ("prunelens.pruning", 5),
    ("prunelens.suite", 6),
    ("prunelens.accuracy", 7), ("prunelens.explain", 7), ("prunelens.discovery", 7),
    ("prunelens.alignment", 7), ("prunelens.transfer", 7),
    ("prunelens.analysis.schedules", 8), ("prunelens.analysis", 7),
    ("prunelens.evaluate", 8), ("prunelens.report", 8),
    ("prunelens.cli", 9), ("prunelens.__main__", 9),
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
