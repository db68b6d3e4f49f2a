"""The demo (`python -m moeroute demo`) trains, prints its tables and saves its plot (quick mode)."""

import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from moeroute import _demo  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_output(text, png):
    assert "epoch   1/1  loss " in text and "aux " in text
    assert "final test accuracy: " in text
    assert "expert specialization (layer 1, test set)" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["expert"] + [str(c) for c in range(10)] + ["total", "dominant", "class"] in lines
    rows = [words for words in lines if words and words[0].isdigit()]
    assert [int(words[0]) for words in rows] == list(range(8))  # one row per expert:
    for words in rows:  # expert, 10 class counts, total, dominant class
        assert sum(map(int, words[1:11])) == int(words[11])
    assert "tokens per expert (kept):" in text and "min/max ratio" in text and "dropped picks" in text
    assert f"expert-load plot saved to {png}" in text
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_demo_quick(tmp_path, capsys):
    png = tmp_path / "load.png"
    assert _demo.main(["--quick", "--out", str(png)]) == 0
    check_output(capsys.readouterr().out, png)


def test_python_m_moeroute_demo(tmp_path):
    png = tmp_path / "load.png"
    result = subprocess.run([sys.executable, "-m", "moeroute", "demo", "--quick", "--out", str(png)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_output(result.stdout, png)


def test_demo_without_torch_says_what_to_install():
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['moeroute', 'demo'];"
            "runpy.run_module('moeroute', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'pip install "moeroute[demo]"' in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_help_mentions_the_demo():
    result = subprocess.run([sys.executable, "-m", "moeroute", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout
