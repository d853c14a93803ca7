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
