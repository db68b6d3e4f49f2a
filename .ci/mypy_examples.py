"""Writes the README's python blocks and the package's docstring examples (the `>>>` lines) as the
modules of a package `moeroute_examples` in a directory, for .ci/mypy.sh to type-check as user code
(pyproject.toml's [tool.mypy] overrides name the package)."""

import ast
import doctest
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_blocks() -> list:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def docstring_examples() -> list:
    """(name, source) of each docstring with examples in python/moeroute (read, not imported)."""
    parser = doctest.DocTestParser()
    found = []
    for path in sorted((ROOT / "python" / "moeroute").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT / "python").with_suffix("").parts)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                examples = parser.get_examples(doc) if doc else []
                if examples:
                    name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                    found.append((name, "".join(e.source for e in examples)))
    return found


def main(out: str) -> None:
    directory = pathlib.Path(out) / "moeroute_examples"
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text("")
    blocks = readme_blocks()
    docs = docstring_examples()
    for i, block in enumerate(blocks):
        (directory / f"readme_{i}.py").write_text(f"# README.md, python block {i}\n{block}")
    for name, source in docs:
        (directory / f"doc_{name.replace('.', '_')}.py").write_text(f"# the docstring example of {name}\n{source}")
    print(f"{len(blocks)} README blocks, {len(docs)} docstring examples")


if __name__ == "__main__":
    main(sys.argv[1])
