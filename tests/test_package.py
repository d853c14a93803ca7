"""The product package stands alone: importing every dreambat module never imports the mini-world."""

import subprocess
import sys

from tests.conftest import REPO

CHECK = """
import importlib, pkgutil, sys
import dreambat
for module in pkgutil.walk_packages(dreambat.__path__, "dreambat."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
leaked = sorted(name for name in sys.modules if name.split(".")[0] == "dreambat_world")
print("LEAKED", leaked)
"""


def test_product_never_imports_the_world():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LEAKED []" in out.stdout, out.stdout


def test_no_import_cycle_between_dreambat_modules():
    """Module-level imports only (imports inside functions are how a lower layer may call up)."""
    import ast
    from collections import defaultdict

    root = REPO / "dreambat"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for candidate in [target] + [f"{target}.{alias.name}" for alias in node.names]:
                    if candidate in modules and candidate != name:
                        graph[name].add(candidate)
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(stack + [nxt])}"
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in modules:
        if name not in state:
            visit(name, [name])
