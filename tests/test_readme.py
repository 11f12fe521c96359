"""The README's Python examples run as written and print what it shows."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
GETTING_STARTED = os.path.join(os.path.dirname(__file__), "..", "docs", "getting-started.md")

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def _examples(path=README):
    """(code, shown output) of each ```python block; the output is the
    ```text block right after it (prose may stand between), else ""."""
    with open(path) as f:
        blocks = _BLOCK.findall(f.read())
    return [(body, blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else "")
            for i, (lang, body) in enumerate(blocks) if lang == "python"]


def test_readme_has_examples_with_their_output():
    examples = _examples()
    assert len(examples) >= 2, "README lost its run()/Popen and operation API examples"
    assert all(shown for _, shown in examples), "every README example shows its output"


@pytest.mark.parametrize("index", range(len(_examples())))
def test_readme_example_prints_what_it_shows(index, capsys, recwarn):
    code, shown = _examples()[index]
    exec(compile(code, f"README.md example {index + 1}", "exec"), {})
    assert capsys.readouterr().out == shown


def test_readme_links_to_files_that_exist():
    # The README points into docs/ for what moved there: a renamed page must
    # not leave a dead link behind.
    with open(README) as f:
        targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", f.read())
    assert targets
    root = os.path.dirname(README)
    missing = [t for t in targets if not os.path.exists(os.path.join(root, t))]
    assert not missing, f"README links to missing files: {missing}"


def test_getting_started_shows_the_readme_examples():
    # docs/getting-started.md repeats them; what is run here is what it shows.
    assert set(_examples()) <= set(_examples(GETTING_STARTED))
