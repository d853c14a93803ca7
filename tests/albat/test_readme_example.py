"""The README's "ALBAT from Python" example runs as printed and keeps what it says it keeps."""

import contextlib
import io
import re

from tests.conftest import REPO


def test_readme_python_example_keeps_the_right_candidates():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### ALBAT from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    kept = namespace["kept"]
    assert len(kept) == 10
    assert all(index < 20 for index in kept), kept  # every kept candidate follows the adaptation rule
    assert "kept: [0, 1, 3, 4, 5, 10, 11, 13, 17, 18]" in out.getvalue()
