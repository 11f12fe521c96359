"""The README's Python example runs as written."""
import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_python_example_runs(capsys):
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "terminated" in printed or "exited" in printed
