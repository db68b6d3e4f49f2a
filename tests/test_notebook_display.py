"""The notebook display: RoutingPlan._repr_html_ and RoutingStats._repr_html_ are well-formed HTML
(no script, no external resource) with the numbers in them — NumPy and torch plans, T=0, E=1,
many experts — and moeroute.plot's helpers return matplotlib figures."""

import html
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

import moeroute
from moeroute import _html

try:
    import torch
except ImportError:  # the NumPy tests run without it
    torch = None
try:
    import matplotlib
except ImportError:
    matplotlib = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
needs_matplotlib = pytest.mark.skipif(torch is None or matplotlib is None, reason="needs torch and matplotlib")

VOID = {"br", "hr", "img", "meta", "input", "col", "wbr"}


class _Checker(HTMLParser):
    """Checks that every tag is closed in order (the HTML is also XHTML-clean) and collects text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            assert not name.startswith("on"), f"event handler attribute {name}"
            if name in ("src", "href"):
                raise AssertionError(f"external resource {name}={value}")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(markup):
    """Parses the HTML twice (html.parser: balanced tags; xml.etree: well-formed), returns its text."""
    assert isinstance(markup, str) and markup.startswith("<div")
    checker = _Checker()
    checker.feed(markup)
    checker.close()
    assert checker.stack == []
    assert "script" not in checker.tags and "iframe" not in checker.tags and "link" not in checker.tags
    assert "http://" not in markup.replace("http://www.w3.org/2000/svg", "") and "https://" not in markup
    ET.fromstring(f"<root>{markup.replace('&nbsp;', ' ')}</root>")
    return " ".join(checker.text)


def numbers(text):
    """The integers in the text (thousands separators removed)."""
    return {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)}


def table_row(markup, name):
    """The counts of one row (kept / assigned / dropped) of the per-expert table."""
    row = re.search(rf"<tr><th[^>]*>{name}</th>(.*?)</tr>", markup).group(1)
    return [int(v.replace(",", "")) for v in re.findall(r"<td[^>]*>([\d,]+)</td>", row)]


def realistic_logits(t=512, e=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((t, e)) + np.linspace(0, 1.2, e)).astype(np.float32)


def check_plan_html(plan):
    markup = plan._repr_html_()
    text = check_html(markup)
    assert "RoutingPlan" in text
    host = plan.numpy()
    kept, assigned = host.tokens_per_expert.tolist(), host.assigned_per_expert.tolist()
    assert table_row(markup, "kept") == kept
    assert table_row(markup, "assigned") == assigned
    assert table_row(markup, "dropped") == [a - k for a, k in zip(assigned, kept)]
    found = numbers(text)
    assert {plan.num_tokens, plan.num_experts, plan.num_slots, plan.num_rows, plan.num_dropped} <= found
    if plan.capacity is None:
        assert "dropless" in text
    else:
        assert f"{plan.capacity:,} rows per expert" in text and f"capacity {plan.capacity:,}" in text
    picks = int((host.expert_ids >= 0).sum())
    assert f"{plan.num_dropped:,} of {picks:,} picks" in text
    for option in (plan.score, plan.normalize, f"{plan.scale:g}"):
        assert option in text
    return markup, text


def test_numpy_plan_with_drops():
    plan = moeroute.route(realistic_logits(), 2, capacity_factor=1.0)
    assert plan.num_dropped > 0
    markup, text = check_plan_html(plan)
    assert "22.2%" in text or f"{100 * plan.num_dropped / 1024:.1f}%" in text
    assert markup.count("<rect") >= plan.num_experts and _html.DROPPED_COLOR in markup
    assert "NumPy float32" in text


def test_numpy_plan_options_and_dropless():
    plan = moeroute.route(realistic_logits(64, 4).astype(np.float64), 3, score="sigmoid", normalize="none",
                          scale=2.5)
    markup, text = check_plan_html(plan)
    assert "sigmoid" in text and "none" in text and "2.5" in text and "NumPy float64" in text
    assert "capacity " not in re.sub(r"<[^>]+>", " ", markup.split("<svg", 1)[1])  # no capacity line


def test_text_is_escaped():
    plan = moeroute.route(realistic_logits(16, 4), 2)
    markup = _html._render("<b>&", [("a<", "x > y & z")], plan.tokens_per_expert, plan.assigned_per_expert, None)
    check_html(markup)
    assert "&lt;b&gt;&amp;" in markup and "x &gt; y &amp; z" in markup and "<b>" not in markup


def test_zero_tokens():
    plan = moeroute.route(np.zeros((0, 4), np.float32), 2, capacity_factor=1.0)
    _markup, text = check_plan_html(plan)
    assert "0 of 0 picks" in text


def test_one_expert():
    plan = moeroute.route(realistic_logits(10, 1), 1, capacity=6)
    markup, text = check_plan_html(plan)
    assert plan.num_dropped == 4 and table_row(markup, "kept") == [6]


def test_zero_tokens_one_expert():
    check_plan_html(moeroute.route(np.zeros((0, 1), np.float32), 1))


def test_expert_choice_plan():
    check_plan_html(moeroute.expert_choice(realistic_logits(32, 4), capacity_factor=1.0))


def test_many_experts_caps_the_bars():
    e = 300
    plan = moeroute.route(realistic_logits(2048, e), 4, capacity_factor=1.0)
    markup = plan._repr_html_()
    text = check_html(markup)
    assert markup.count("<title>") == _html.MAX_BARS  # one tooltip per bar shown
    assert f"the {_html.MAX_BARS} most loaded of {e} experts shown" in text
    assert len(table_row(markup, "kept")) == _html.MAX_TABLE_ROWS and f"{e - _html.MAX_TABLE_ROWS} more" in text
    assert len(markup) < 200_000


def test_small_plan_shows_bar_labels():
    plan = moeroute.route(realistic_logits(), 2, capacity_factor=1.0)
    svg = plan._repr_html_().split("<svg", 1)[1].split("</svg>", 1)[0]
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    for count in plan.tokens_per_expert.tolist():
        assert str(count) in labels


@needs_torch
def test_torch_plan():
    plan = moeroute.route(torch.from_numpy(realistic_logits()).requires_grad_(), 2, capacity_factor=1.25)
    _markup, text = check_plan_html(plan)
    assert "torch float32 on cpu" in text


@pytest.mark.gpu
@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_plan():
    plan = moeroute.route(torch.from_numpy(realistic_logits()).cuda(), 2, capacity_factor=1.0)
    _markup, text = check_plan_html(plan)
    assert "cuda:0" in text


@needs_torch
def test_moe_stats():
    from moeroute.torch import MoE

    torch.manual_seed(0)
    layer = MoE(16, 4, 2, ffn_size=32, capacity_factor=0.5)
    layer(torch.randn(64, 16))
    stats = layer.stats
    assert stats.capacity == layer.plan(torch.zeros(64, 4)).capacity
    markup = stats._repr_html_()
    text = check_html(markup)
    assert "RoutingStats" in text and f"capacity {stats.capacity}" in text
    assert table_row(markup, "kept") == stats.tokens_per_expert.tolist()
    assert table_row(markup, "assigned") == stats.assigned_per_expert.tolist()
    assert f"{stats.num_dropped} of 128 picks" in text and stats.num_dropped > 0


@needs_torch
def test_moe_stats_dropless():
    from moeroute.torch import MoE

    layer = MoE(8, 3, 1, ffn_size=8)
    layer(torch.randn(5, 8))
    assert layer.stats.capacity is None
    assert "dropless" in check_html(layer.stats._repr_html_())


@needs_torch
def test_stats_without_capacity_field_value():
    from moeroute.torch import RoutingStats

    stats = RoutingStats(torch.tensor([3, 1]), torch.tensor([3, 1]), 0)
    assert "dropless" in check_html(stats._repr_html_())


# moeroute.plot

from moeroute import plot  # noqa: E402  (importable without matplotlib: it imports it lazily)


@pytest.fixture
def plt():
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    plt.switch_backend("Agg")
    yield plt
    plt.close("all")
    plt.switch_backend(backend)


def history(steps=20):
    from moeroute.torch import MoE

    torch.manual_seed(0)
    layer = MoE(16, 4, 2, ffn_size=32, capacity_factor=1.0)
    stats, plans = [], []
    for _ in range(steps):
        x = torch.randn(32, 16)
        layer(x)
        stats.append(layer.stats)
        plans.append(layer.plan(layer.router(x)))
    return stats, plans


@needs_matplotlib
def test_plot_expert_load_from_stats_lines_and_heatmap(plt):
    from matplotlib.figure import Figure

    stats, plans = history()
    fig = plot.plot_expert_load(stats)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 4 + 2  # one per expert, balanced, capacity (taken from the stats)
    assert lines[-1].get_ydata()[0] == stats[-1].capacity
    fig2 = plot.plot_expert_load(plans, kind="heatmap", field="assigned_per_expert")
    assert isinstance(fig2, Figure) and len(fig2.axes) == 2  # the heatmap and its colorbar


@needs_matplotlib
def test_plot_expert_load_from_arrays_on_given_axes(plt):
    fig, ax = plt.subplots()
    counts = np.random.default_rng(0).integers(0, 20, (30, 3))
    assert plot.plot_expert_load(counts, ax=ax, capacity=15, smooth=5, balanced=10) is fig
    assert len(ax.get_lines()) == 3 + 2 and len(ax.get_lines()[0].get_xdata()) == 26
    assert plot.plot_expert_load([torch.tensor(row) for row in counts]).axes[0].get_lines()


@needs_matplotlib
def test_plot_drops_and_tokens_per_expert(plt):
    from matplotlib.figure import Figure

    stats, plans = history(12)
    fig = plot.plot_drops(stats)
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "dropped picks (%)"
    fig = plot.plot_drops([s.num_dropped for s in stats], smooth=1)
    assert fig.axes[0].get_ylabel() == "dropped picks"
    assert isinstance(plot.plot_tokens_per_expert(plans[-1]), Figure)
    assert isinstance(plot.plot_tokens_per_expert(np.array([3, 4, 5])), Figure)


@needs_matplotlib
def test_plot_bad_input(plt):
    with pytest.raises(ValueError, match="kind"):
        plot.plot_expert_load(np.ones((3, 2)), kind="pie")
    with pytest.raises(ValueError, match="no steps"):
        plot.plot_expert_load([])
    with pytest.raises(ValueError, match="expected"):
        plot.plot_expert_load(np.ones(3))


def test_plot_without_matplotlib_says_what_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.pyplot'] = None\n"
            "import numpy as np\nfrom moeroute import plot\n"
            "try:\n    plot.plot_expert_load(np.ones((3, 2)))\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 'pip install "moeroute[demo]"' in result.stdout and 'pip install "moeroute[plot]"' in result.stdout


@needs_torch
def test_html_module_helpers():
    assert html.escape("<") == "&lt;"  # (the module escapes with html.escape)
    assert _html.host(torch.tensor([1, 2])).tolist() == [1, 2]
