"""The README's example and the docstring examples run and do what they say."""

import doctest
import pathlib
import re

import pytest

import moeroute
import moeroute.numpy
import moeroute.options
import moeroute.plan

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_example_runs():
    blocks = python_blocks(README.read_text())
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


@pytest.mark.parametrize("obj", [moeroute.route, moeroute.numpy.route, moeroute.numpy.expert_choice,
                                 moeroute.expert_choice, moeroute.options, moeroute.plan],
                         ids=lambda o: f"{o.__module__}.{o.__name__}" if callable(o) else o.__name__)
def test_docstring_examples(obj):
    tests = [t for t in doctest.DocTestFinder().find(obj) if t.examples]
    assert tests, f"{obj} has no docstring example"
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)[:2]
    assert len(commands) == 2
    for command in commands:
        assert command.strip() in ci


DOCS = README.parent / "docs"


def test_reference_docs_exist_and_are_linked():
    semantics = DOCS / "semantics.md"
    assert semantics.is_file(), "docs/semantics.md is missing"
    assert "docs/semantics.md" in README.read_text(), "README does not link docs/semantics.md"
    text = semantics.read_text()
    for topic in ("Capacity", "priority", "Dropless", "Expert choice", "RoutingPlan", "combine_backward",
                  "route_backward", "load_balancing_loss", "dtype rule", "Errors", "set_checks"):
        assert topic in text, f"docs/semantics.md does not cover {topic}"


@pytest.mark.parametrize("doc", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_examples_run(doc):
    blocks = python_blocks(doc.read_text())
    for i, block in enumerate(blocks):
        if "import torch" in block:
            pytest.importorskip("torch")
        exec(compile(block, f"{doc}:python block {i + 1}", "exec"), {})
