"""The README's example and the docstring examples run and do what they say."""

import doctest
import pathlib
import re

import pytest

import moeroute
import moeroute.ops
import moeroute.plan

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_example_runs():
    blocks = python_blocks(README.read_text())
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


@pytest.mark.parametrize("module", [moeroute.ops, moeroute.plan], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)[:2]
    assert len(commands) == 2
    for command in commands:
        assert command.strip() in ci
