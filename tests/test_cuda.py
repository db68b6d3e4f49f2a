"""moeroute on CUDA tensors against the CPU path on the same inputs: routing decisions bit-identical,
permute exact, floats within float32 (float64) rounding, half-precision results at most 2x as far
from a float64 reference as torch's own half-precision result; gradcheck, CUDA graphs,
torch.compile, the MoE layer and torch's current stream. Skipped where no CUDA device is present."""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import moeroute  # noqa: E402
from conftest import (BF16, CAPACITY_FACTORS, DECISIONS, F16, F32, F64, FLOAT_DTYPES,  # noqa: E402
                      half_ulp_close, logits_st, route_case)
from moeroute.plan import FIELD_NAMES  # noqa: E402
from moeroute.torch import MoE  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")
TORCH_DTYPES = {F32: torch.float32, F64: torch.float64, F16: torch.float16, BF16: torch.bfloat16}
HALF = (torch.float16, torch.bfloat16)
# (rtol, atol) of float32 / float64 results against the CPU's; atol scales with the result's magnitude.
TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-14)}


# ------------------------------------------------------------------------------------------ helpers

def tensor(array, device, requires_grad=False):
    """The NumPy array (any float dtype, bfloat16 included) as a tensor of that dtype on device."""
    dtype = TORCH_DTYPES[np.dtype(array.dtype)]
    t = torch.from_numpy(np.asarray(array, np.float64)).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def host(t):
    return t.detach().cpu()


def bias_on(how, device):
    """`how` = ("route", k, options) or ("expert", options) with a bias given as an array or a list
    turned into a tensor on device."""
    bias = how[-1].get("bias")
    if bias is None or isinstance(bias, torch.Tensor):
        return how
    return (*how[:-1], {**how[-1], "bias": tensor(np.asarray(bias), device)})


def plan_for(logits, how):
    """The plan of `how` (see bias_on) for these logits."""
    kind, *args = bias_on(how, logits.device)
    if kind == "expert":
        return moeroute.expert_choice(logits, **args[0])
    k, options = args
    return moeroute.route(logits, k, **options)


def plans_for(logits, how):
    """(CUDA plan, CPU plan) of the same NumPy logits."""
    return plan_for(tensor(logits, DEVICE), how), plan_for(tensor(logits, "cpu"), how)


def assert_close(got, want, scale=None, what=""):
    """|got - want| <= rtol * scale + atol * max(1, max scale), scale = |want| or, for a sum, the sum of
    its |terms|: float32 (float64) rounding of the result or of its terms."""
    got = host(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.dtype, want.shape)
    if want.numel() == 0:
        return
    rtol, atol = TOLERANCE[want.dtype]
    scale = (want.abs() if scale is None else scale).double()
    diff = (got.double() - want.double()).abs()
    bad = diff > rtol * scale + atol * max(1.0, float(scale.max()))
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} values differ: got "
                           f"{got[bad][:5].tolist()}, want {want[bad][:5].tolist()}")


def assert_half_within_torch(got, torch_half, exact, terms, what=""):
    """A half-precision result is, by max and by mean |error| against the float64 `exact`, within 2x
    the error of torch's own half-precision result of the same op, plus float32 rounding at the size
    `terms` of the largest term summed (for results torch gets exactly, like a gradient cancelling to 0)."""
    ours = (host(got).double() - exact).abs()
    theirs = (host(torch_half).double() - exact).abs()
    if exact.numel() == 0:
        return
    floor = torch.finfo(torch.float32).eps * max(1.0, float(terms))
    for stat in (torch.max, torch.mean):
        assert stat(ours) <= 2 * stat(theirs) + floor, (
            f"{what}: {stat.__name__} |error| {float(stat(ours)):.3g} > 2x torch's {float(stat(theirs)):.3g}")


def assert_same_plan(got, want, device):
    """The CUDA plan `got` against the CPU plan `want`: every field on `device`, the decisions
    bit-identical, probs and weights within rounding."""
    assert got.capacity == want.capacity and got.num_rows == want.num_rows
    assert (got.score, got.normalize, got.scale) == (want.score, want.normalize, want.scale)
    for name in FIELD_NAMES:
        assert getattr(got, name).device == device, (name, getattr(got, name).device)
    same_probs = torch.equal(host(got.probs), want.probs)
    for name in DECISIONS:
        g, w = host(getattr(got, name)), getattr(want, name)
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        if not torch.equal(g, w):
            where = tuple(torch.nonzero(g != w)[0].tolist())
            raise AssertionError(f"plan.{name} differs from the CPU's first at {where}: {g[where].item()} vs "
                                 f"{w[where].item()} (probs bit-identical to the CPU's: {same_probs})")
    assert_close(got.probs, want.probs)
    assert_close(got.weights, want.weights)


def largest(t):
    return float(t.abs().max()) if t.numel() else 0.0


def with_zero_row(rows):
    """rows with a zero row appended, so that index -1 (a dropped pick, a padding row) reads zeros."""
    return torch.cat([rows, rows.new_zeros((1, rows.shape[1]))])


def gather_sum(rows, dest, weights):
    """Combine written with torch ops in the dtype of rows: y[t] = sum_s w[t,s] * rows[dest[t,s]]."""
    picked = with_zero_row(rows)[dest.long()]
    return (picked * weights.to(rows.dtype)[..., None]).sum(1)


def scatter_rows(grad_y, dest, weights, rows):
    """combine's grad_yp written with torch ops in the dtype of grad_y."""
    out = grad_y.new_zeros((rows, grad_y.shape[1]))
    kept = dest >= 0
    out[dest[kept].long()] = (weights.to(grad_y.dtype)[..., None] * grad_y[:, None, :])[kept]
    return out


def dots(grad_y, rows, dest):
    """combine's grad_weights written with torch ops in the dtype of rows: <grad_y[t], rows[dest[t,s]]>."""
    return (with_zero_row(rows)[dest.long()] * grad_y[:, None, :]).sum(-1)


def fixed_selection_weights(logits, plan):
    """The plan's weights recomputed with torch ops from logits, its picks and drops held fixed."""
    probs = torch.softmax(logits, -1) if plan.score == "softmax" else torch.sigmoid(logits)
    ids = plan.expert_ids.long()
    picked = probs.gather(1, ids.clamp(min=0)) * (ids >= 0)
    kept = plan.dest >= 0
    if plan.normalize == "none":
        return picked * kept * plan.scale
    total = (picked if plan.normalize == "topk" else picked * kept).sum(1, keepdim=True)
    return picked / torch.where(total == 0, torch.ones_like(total), total) * kept * plan.scale


# ------------------------------------------------------------------------ op checks, CUDA vs CPU

def pair(array):
    """(CUDA tensor, CPU tensor) of one NumPy array."""
    return tensor(array, DEVICE), tensor(array, "cpu")


def check_ops(cuda_plan, cpu_plan, dtype, hidden, seed):
    """permute, combine, permute_backward and combine_backward on CUDA against the CPU (float32/64)
    or against torch's own half-precision result (float16/bfloat16), on random activations."""
    rng = np.random.default_rng(seed)
    tokens, rows, slots = cpu_plan.num_tokens, cpu_plan.num_rows, cpu_plan.top_k
    x, yp, grad_y = (pair(rng.uniform(-4, 4, shape).astype(dtype))
                     for shape in ((tokens, hidden), (rows, hidden), (tokens, hidden)))
    given_w = pair(rng.uniform(-1, 1, (tokens, slots)).astype(cpu_plan.weights.numpy().dtype))
    plans = (cuda_plan, cpu_plan)
    check_permute(x, plans)
    for weights in (None, given_w):
        check_combine(yp, plans, weights)
        check_combine_backward(grad_y, yp, plans, weights)
    check_permute_backward(yp, plans)


def check_permute(x, plans):
    """Exact: the CPU's result, and x[src] with zero padding rows."""
    xp = moeroute.permute(x[0], plans[0])
    assert xp.device == x[0].device
    assert torch.equal(host(xp), moeroute.permute(x[1], plans[1]))
    assert torch.equal(host(xp), with_zero_row(x[1])[plans[1].src.long()])


def check_weighted_sum(what, got, rows, plans, weights, want_cpu):
    """A result of the combine formula (combine, permute_backward) on CUDA: within float32 (float64)
    rounding of the CPU's result `want_cpu`, or for half types within 2x torch's own error."""
    assert got.device == rows[0].device
    dest, w = plans[1].dest, weights[1].double()
    scale = gather_sum(rows[1].double().abs(), dest, w.abs())
    if rows[1].dtype in HALF:
        assert_half_within_torch(got, gather_sum(rows[0], plans[0].dest, weights[0]),
                                 gather_sum(rows[1].double(), dest, w), largest(scale), what)
    else:
        assert_close(got, want_cpu, scale, what)


def check_combine(yp, plans, weights):
    """combine with the plan's weights (weights None) or the given (CUDA, CPU) weights."""
    if weights is None:
        got, want = moeroute.combine(yp[0], plans[0]), moeroute.combine(yp[1], plans[1])
        weights = (plans[0].weights, plans[1].weights)
    else:
        got, want = moeroute.combine(yp[0], plans[0], weights[0]), moeroute.combine(yp[1], plans[1], weights[1])
    check_weighted_sum("combine", got, yp, plans, weights, want)


def check_permute_backward(grad_xp, plans):
    ones = torch.ones(plans[1].dest.shape, dtype=plans[1].weights.dtype)
    check_weighted_sum("permute_backward", moeroute.permute_backward(grad_xp[0], plans[0]), grad_xp, plans,
                       (ones.to(DEVICE), ones), moeroute.permute_backward(grad_xp[1], plans[1]))


def check_combine_backward(grad_y, yp, plans, weights):
    """grad_yp (one product per element) and grad_weights (dot products over H), with the plan's
    weights (weights None) or the given (CUDA, CPU) weights."""
    given = weights is not None
    weights = weights if given else (plans[0].weights, plans[1].weights)
    got_yp, got_w = moeroute.combine_backward(grad_y[0], yp[0], plans[0], weights[0] if given else None)
    dest, rows = plans[1].dest, plans[1].num_rows
    assert got_yp.device == got_w.device == yp[0].device and host(got_w).dtype == weights[1].dtype
    dots_scale = dots(grad_y[1].double().abs(), yp[1].double().abs(), dest)
    if yp[1].dtype in HALF:
        exact_yp = scatter_rows(grad_y[1].double(), dest, weights[1].double(), rows)
        assert_half_within_torch(got_yp, scatter_rows(grad_y[0], plans[0].dest, weights[0], rows),
                                 exact_yp, largest(exact_yp), "combine_backward grad_yp")
        assert_half_within_torch(got_w, dots(grad_y[0], yp[0], plans[0].dest),
                                 dots(grad_y[1].double(), yp[1].double(), dest), largest(dots_scale),
                                 "combine_backward grad_weights")
        return
    want_yp, want_w = moeroute.combine_backward(grad_y[1], yp[1], plans[1], weights[1] if given else None)
    assert_close(got_yp, want_yp, what="combine_backward grad_yp")
    # grad_weights has the weights' dtype but is accumulated in yp's (float32 for float32 yp).
    acc = yp[1].dtype
    assert_close(host(got_w).to(acc), want_w.to(acc), dots_scale, "combine_backward grad_weights")


def check_route_backward(cuda_plan, cpu_plan, logits, seed):
    """route_backward on CUDA against the CPU; for half logits within 1 ulp of the CPU and, where
    the logits are finite, within 2x the error of torch's own half-precision autograd."""
    rng = np.random.default_rng(seed)
    grad_w = pair(rng.uniform(-2, 2, tuple(cpu_plan.weights.shape)).astype(cpu_plan.weights.numpy().dtype))
    logits_cuda, logits_cpu = pair(logits)
    got = moeroute.route_backward(grad_w[0], cuda_plan, logits_cuda)
    want = moeroute.route_backward(grad_w[1], cpu_plan, logits_cpu)
    assert got.device == logits_cuda.device
    if logits_cpu.dtype not in HALF:
        assert_close(got, want, what="route_backward")
        return
    assert host(got).dtype == want.dtype
    half_ulp_close(host(got).float().numpy(), want.float().numpy(), np.dtype(logits.dtype))
    if np.isfinite(np.asarray(logits, np.float64)).all():
        def autograd(l, plan, g):
            l = l.detach().requires_grad_()
            (fixed_selection_weights(l, plan) * g.to(l.dtype)).sum().backward()
            return l.grad
        exact = autograd(logits_cpu.double(), cpu_plan, grad_w[1].double())
        terms = largest(grad_w[1]) * abs(cpu_plan.scale) * cpu_plan.top_k  # bounds grad_probs * probs
        assert_half_within_torch(got, autograd(logits_cuda, cuda_plan, grad_w[0]), exact, terms, "route_backward")


def check_plans(logits, how):
    """The CUDA plan of the NumPy logits against the CPU's: (CUDA plan, CPU plan)."""
    cuda_plan, cpu_plan = plans_for(logits, how)
    assert_same_plan(cuda_plan, cpu_plan, tensor(logits, DEVICE).device)
    return cuda_plan, cpu_plan


def check_everything(logits, how, hidden=16, seed=0):
    cuda_plan, cpu_plan = check_plans(logits, how)
    check_ops(cuda_plan, cpu_plan, logits.dtype, hidden, seed)
    check_route_backward(cuda_plan, cpu_plan, logits, seed)


# ------------------------------------------------------------------------- properties (hypothesis)

@st.composite
def expert_choice_case(draw, **logits_options):
    """(logits, ("expert", options)) with C below, at or above T."""
    logits = draw(logits_st(**logits_options))
    if draw(st.booleans()):
        return logits, ("expert", {"capacity": draw(st.integers(0, logits.shape[0] + 2))})
    return logits, ("expert", {"capacity_factor": draw(st.sampled_from(CAPACITY_FACTORS))})


@st.composite
def routing_case(draw, inf=True):
    """(logits, how): token choice with any options, or expert choice."""
    if draw(st.booleans()):
        logits, k, options = draw(route_case(inf=inf))
        return logits, ("route", k, options)
    return draw(expert_choice_case(inf=inf))


@given(route_case())
def test_route_matches_cpu(case):
    logits, k, options = case
    check_plans(logits, ("route", k, options))


@given(route_case(big=True))
def test_large_route_matches_cpu(case):
    logits, k, options = case
    check_plans(logits, ("route", k, options))


@given(expert_choice_case())
def test_expert_choice_matches_cpu(case):
    check_plans(*case)


@given(routing_case(), st.sampled_from(FLOAT_DTYPES), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_permute_combine_and_backward_match_cpu(case, dtype, hidden, seed):
    logits, how = case
    check_ops(*plans_for(logits, how), dtype, hidden, seed)


@given(routing_case(inf=False), st.integers(0, 2**32 - 1))
def test_route_backward_matches_cpu(case, seed):
    logits, how = case
    check_route_backward(*plans_for(logits, how), logits, seed)


# ----------------------------------------------------------------------------------- edge cases

def normal(tokens, experts, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(scale=scale, size=(tokens, experts))


def integers(tokens, experts, seed=0):
    """Small integers: ties everywhere."""
    return np.random.default_rng(seed).integers(-2, 3, size=(tokens, experts)).astype(np.float64)


def with_infinities(tokens, experts, seed=0):
    """Normal logits, a few +inf (some rows with two), many -inf, never a row of all -inf."""
    rng = np.random.default_rng(seed)
    x = normal(tokens, experts, seed)
    x[rng.random(x.shape) < 0.3] = -np.inf
    x[rng.random(x.shape) < 0.03] = np.inf
    x[::7, :2] = np.inf
    x[np.all(x == -np.inf, axis=1), -1] = 0.5
    return x


BIAS_16 = np.linspace(-0.5, 0.5, 16)
BIAS_512 = np.random.default_rng(1).uniform(-0.2, 0.2, 512)
EDGE_CASES = {
    "T=0 dropless": (np.zeros((0, 8)), ("route", 2, {})),
    "T=0 capacity": (np.zeros((0, 8)), ("route", 2, dict(capacity_factor=1.25, min_capacity=2))),
    "T=0 expert choice": (np.zeros((0, 8)), ("expert", dict(capacity_factor=1.0))),
    "E=1": (normal(40, 1), ("route", 1, {})),
    "E=1 capacity": (normal(40, 1), ("route", 1, dict(capacity=7, priority="score"))),
    "k=E kept": (normal(64, 8), ("route", 8, dict(normalize="kept", capacity_factor=1.0))),
    "k=E sigmoid": (normal(64, 8), ("route", 8, dict(score="sigmoid", normalize="none", scale=2.5))),
    "ties score priority": (integers(600, 16), ("route", 4, dict(capacity_factor=1.0, priority="score"))),
    "ties token priority groups": (integers(600, 16), ("route", 4, dict(
        score="sigmoid", num_groups=4, topk_groups=2, bias=BIAS_16, capacity=100, priority="token"))),
    "ties slot priority multiple": (integers(600, 16), ("route", 2, dict(
        capacity_factor=0.5, min_capacity=20, capacity_multiple=8))),
    "ties expert choice": (integers(600, 16), ("expert", dict(capacity_factor=2.0))),
    "E=512 k=16": (normal(2048, 512), ("route", 16, {})),
    "E=512 k=16 groups bias capacity": (normal(2048, 512), ("route", 16, dict(
        score="sigmoid", num_groups=8, topk_groups=4, bias=BIAS_512, scale=2.5, capacity_factor=1.25,
        priority="score"))),
    "E=512 k=16 pad_to": (normal(2048, 512), ("route", 16, dict(normalize="kept", pad_to=16))),
    "E=512 expert choice": (normal(1024, 512), ("expert", dict(capacity_factor=1.0))),
    "inf dropless": (with_infinities(500, 16), ("route", 4, {})),
    "inf sigmoid capacity": (with_infinities(500, 16), ("route", 4, dict(
        score="sigmoid", normalize="kept", capacity_factor=1.0, priority="score"))),
    "inf expert choice": (with_infinities(500, 16), ("expert", dict(capacity=40))),
    "many tokens capacity": (normal(16384, 64), ("route", 2, dict(capacity_factor=1.25))),
    "many tokens pad_to": (normal(16384, 64), ("route", 2, dict(pad_to=128))),
    "many tokens k=8": (normal(16384, 256), ("route", 8, dict(normalize="none", capacity_factor=1.0,
                                                              priority="token"))),
    "expert choice C < T": (normal(8192, 64), ("expert", dict(capacity_factor=2.0))),
    "expert choice C > T": (normal(100, 64), ("expert", dict(capacity=150))),
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases_match_cpu(name, dtype):
    logits, how = EDGE_CASES[name]
    check_everything(logits.astype(dtype), how, hidden=24 if logits.shape[0] > 4000 else 40)


# -------------------------------------------------------------------------------------- autograd

AUTOGRAD_CASES = [
    ("route", 2, {}),
    ("route", 4, dict(score="sigmoid", normalize="kept", capacity_factor=1.0, priority="score")),
    ("route", 3, dict(normalize="none", scale=2.5, pad_to=8, num_groups=4, topk_groups=2)),
    ("expert", dict(capacity_factor=1.5)),
]


def autograd_run(device, how, logits, x, yp, w, grad_y, grad_probs):
    """route -> permute -> combine, a combine of leaf yp and weights, and the auxiliary losses,
    forward and backward: (outputs, gradients of logits, x, yp and weights), on the host."""
    leaves = [tensor(a, device, requires_grad=True) for a in (logits, x, yp, w)]
    l, xx, ypl, wl = leaves
    plan = plan_for(l, how)
    y = moeroute.combine(moeroute.permute(xx, plan) * 1.5, plan, plan.weights)
    y2 = moeroute.combine(ypl, plan, wl)
    losses = moeroute.losses
    loss = (((y + y2) * tensor(grad_y, device)).sum() + (plan.probs * tensor(grad_probs, device)).sum()
            + losses.load_balancing_loss(plan) + losses.z_loss(l) + losses.importance_loss(plan))
    loss.backward()
    outputs = [loss, y, y2] + [leaf.grad for leaf in leaves]
    assert all(t.device == l.device for t in outputs)
    return [host(t) for t in outputs]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("how", AUTOGRAD_CASES, ids=str)
def test_autograd_matches_cpu(how, dtype):
    rng = np.random.default_rng(3)
    tokens, experts, hidden = 200, 16, 24
    logits = rng.normal(size=(tokens, experts)).astype(dtype)
    rows = plan_for(tensor(logits, "cpu"), how).num_rows
    slots = experts if how[0] == "expert" else how[1]
    arrays = [rng.uniform(-2, 2, shape).astype(dtype) for shape in
              ((tokens, hidden), (rows, hidden), (tokens, slots), (tokens, hidden), (tokens, experts))]
    results = zip(autograd_run(DEVICE, how, logits, *arrays), autograd_run("cpu", how, logits, *arrays))
    for i, (got, want) in enumerate(results):
        # Gradients (from the 4th output on) sum terms that the two devices add in different orders
        # (combine's dot products over H), with cancellation: rounding relative to the largest term.
        assert_close(got, want, None if i < 3 else torch.full_like(want, float(want.abs().max())))


def test_losses_match_cpu():
    rng = np.random.default_rng(4)
    logits, noisy = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    how = ("route", 2, dict(capacity_factor=1.0))
    cuda_plan, cpu_plan = plans_for(logits.astype(np.float32), how)
    losses = moeroute.losses
    for fn in (losses.load_balancing_loss, losses.importance_loss):
        assert_close(fn(cuda_plan), fn(cpu_plan))
    clean, noisy = pair(logits), pair(noisy)
    assert_close(losses.z_loss(clean[0]), losses.z_loss(clean[1]))
    for fn in (losses.noisy_load_probs, losses.noisy_load_loss):
        assert_close(fn(clean[0], 0.5, noisy[0], 2), fn(clean[1], 0.5, noisy[1], 2))


# -------------------------------------------------------------------------------------- gradcheck

def float64_leaf(*shape, seed, uniform=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(*shape, dtype=torch.float64, generator=gen) if uniform else \
        torch.randn(*shape, dtype=torch.float64, generator=gen)
    return t.to(DEVICE).requires_grad_()


@pytest.mark.parametrize("normalize", ["none", "topk", "kept"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_gradcheck_route(score, normalize):
    def weights_and_probs(logits):
        plan = moeroute.route(logits, 2, score=score, normalize=normalize, scale=1.5, capacity=3)
        return plan.weights, plan.probs

    assert torch.autograd.gradcheck(weights_and_probs, (float64_leaf(8, 6, seed=5),), eps=1e-6, atol=1e-7)


def test_gradcheck_expert_choice_permute_combine():
    logits = float64_leaf(8, 4, seed=6)
    assert torch.autograd.gradcheck(lambda l: moeroute.expert_choice(l, capacity=3).weights, (logits,))
    plan = moeroute.route(logits.detach(), 2, capacity=3)
    assert torch.autograd.gradcheck(lambda x: moeroute.permute(x, plan), (float64_leaf(8, 5, seed=7),))
    yp, w = float64_leaf(plan.num_rows, 5, seed=8), float64_leaf(8, 2, seed=9, uniform=True)
    assert torch.autograd.gradcheck(lambda yp, w: moeroute.combine(yp, plan, w), (yp, w))


# ------------------------------------------------------------ CUDA graphs, torch.compile, streams

GRAPH_CASES = [
    ("route", 2, dict(capacity_factor=1.25, priority="score")),
    ("route", 4, dict(normalize="kept", pad_to=8)),
    ("route", 4, dict(score="sigmoid", num_groups=4, topk_groups=2, bias=BIAS_16.tolist(), capacity_factor=1.0)),
    ("expert", dict(capacity_factor=1.0)),
]


def expert_pipeline(logits, x, w, how):
    """route -> permute -> (a matmul standing in for the experts) -> combine."""
    plan = plan_for(logits, how)
    y = moeroute.combine(moeroute.permute(x, plan) @ w, plan)
    return y, plan


@pytest.mark.parametrize("how", GRAPH_CASES, ids=str)
def test_cuda_graph_replay_matches_eager(how):
    gen = torch.Generator(device=DEVICE).manual_seed(10)
    tokens, experts, hidden = 1024, 16, 64

    def inputs():
        return (torch.randn(tokens, experts, device=DEVICE, generator=gen),
                torch.randn(tokens, hidden, device=DEVICE, generator=gen))

    how = bias_on(how, DEVICE)  # made before capture: no host-to-device copy while capturing
    static_logits, static_x = inputs()
    w = torch.randn(hidden, hidden, device=DEVICE, generator=gen) / hidden ** 0.5
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch's docs ask before capture
        for _ in range(3):
            expert_pipeline(static_logits, static_x, w, how)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y, static_plan = expert_pipeline(static_logits, static_x, w, how)
    for _ in range(3):
        logits, x = inputs()
        static_logits.copy_(logits)
        static_x.copy_(x)
        graph.replay()
        y, plan = expert_pipeline(logits, x, w, how)
        torch.cuda.synchronize()
        for name in FIELD_NAMES:
            assert torch.equal(getattr(static_plan, name), getattr(plan, name)), name
        torch.testing.assert_close(static_y, y)


def test_torch_compile_fullgraph_matches_eager():
    def layer(logits, x, w):
        plan = moeroute.route(logits, 2, capacity_factor=1.25, priority="score")
        y = moeroute.combine(moeroute.permute(x, plan) @ w, plan)
        return y.square().sum() + moeroute.losses.load_balancing_loss(plan)

    gen = torch.Generator(device=DEVICE).manual_seed(11)
    inputs = [torch.randn(*shape, device=DEVICE, generator=gen) for shape in ((64, 8), (64, 32), (32, 32))]
    results = []
    for fn in (layer, torch.compile(layer, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward()
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


MOE_CONFIGS = [
    dict(),
    dict(normalize="kept", capacity_factor=1.0, priority="score", load_balancing_coef=0.01, z_loss_coef=1e-3),
    dict(score="sigmoid", num_groups=2, topk_groups=1, bias_update_rate=0.1, pad_to=4, importance_coef=0.01),
    dict(routing="expert", capacity_factor=1.0, activation="gelu"),
]


@pytest.mark.parametrize("config", MOE_CONFIGS, ids=str)
def test_moe_layer_matches_cpu(config):
    torch.manual_seed(0)
    cpu_layer = MoE(16, 4, 2, ffn_size=32, **config)
    cuda_layer = copy.deepcopy(cpu_layer).to(DEVICE)
    x = torch.randn(4, 8, 16)
    grad = torch.randn(4, 8, 16)
    results = []
    for layer in (cuda_layer, cpu_layer):
        xx = x.to(DEVICE if layer is cuda_layer else "cpu").requires_grad_()
        y = layer(xx)
        ((y * grad.to(y.device)).sum() + layer.aux_loss).backward()
        results.append([y, layer.aux_loss, xx.grad, layer.expert_bias, layer.stats.tokens_per_expert]
                       + [p.grad for p in layer.parameters()])
    for got, want in zip(*results):
        assert got.device == results[0][0].device
        torch.testing.assert_close(host(got), want, rtol=1e-4, atol=1e-4)


def test_ops_run_on_the_current_stream():
    """The inputs are written into buffers of stale values on a side stream kept busy first: an op
    that ran on any other stream would read the stale values."""
    rng = np.random.default_rng(12)
    logits, x = rng.normal(size=(4096, 64)).astype(np.float32), rng.normal(size=(4096, 128)).astype(np.float32)
    how = ("route", 2, dict(capacity_factor=1.25))
    want_y, want_plan = expert_pipeline(tensor(logits, "cpu"), tensor(x, "cpu"), torch.eye(128), how)
    want_grads = moeroute.combine_backward(want_y, moeroute.permute(tensor(x, "cpu"), want_plan), want_plan)
    fresh_logits, fresh_x = tensor(logits, DEVICE), tensor(x, DEVICE)
    logits_buffer, x_buffer = fresh_logits.flip(1).contiguous(), torch.zeros_like(fresh_x)
    eye = torch.eye(128, device=DEVICE)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)  # ~50 ms
        logits_buffer.copy_(fresh_logits)
        x_buffer.copy_(fresh_x)
        y, plan = expert_pipeline(logits_buffer, x_buffer, eye, how)
        grads = moeroute.combine_backward(y, moeroute.permute(x_buffer, plan), plan)
    stream.synchronize()
    assert_same_plan(plan, want_plan, fresh_logits.device)
    for got, want, what in zip((y, *grads), (want_y, *want_grads), ("y", "grad_yp", "grad_weights")):
        assert_close(got, want, what=what)


def test_device_mismatch_raises_a_clear_error():
    cuda_plan = moeroute.route(torch.randn(6, 4, device=DEVICE), 2)
    for op, arg in ((moeroute.permute, torch.randn(6, 3)), (moeroute.combine, torch.randn(12, 3))):
        with pytest.raises(moeroute.MoerouteError, match="(?i)device|cuda|cpu"):
            op(arg, cuda_plan)


def test_checked_mode_raises_the_cpu_errors_on_cuda():
    """moeroute.set_checks(True): bad inputs of CUDA ops raise what the CPU ops raise; off (the
    default), the same calls run without a host synchronisation and raise nothing."""
    logits = torch.randn(6, 4)
    logits[3, 1] = float("nan")
    plan = moeroute.route(torch.randn(6, 4), 2, capacity=3)
    bad_dest = plan.dest.clone()
    bad_dest[0, 0] = 99
    bad = moeroute.RoutingPlan._of([getattr(plan, n) if n != "dest" else bad_dest for n in FIELD_NAMES],
                                   plan.capacity, plan.score, plan.normalize, plan.scale)
    yp = torch.randn(plan.num_rows, 5)

    def errors(device):
        out = []
        for call in (lambda: moeroute.route(logits.to(device), 2),
                     lambda: moeroute.route(logits.nan_to_num().to(device), 2,
                                            bias=torch.tensor([0.0, float("inf"), 0.0, 0.0], device=device)),
                     lambda: moeroute.combine(yp.to(device), moeroute.torch.plan_as_tensors(bad, device))):
            try:
                call()
                out.append(None)
            except moeroute.MoerouteError as e:
                out.append((type(e), str(e)))
        return out

    want = errors("cpu")
    assert all(w is not None for w in want)
    moeroute.set_checks(True)
    try:
        assert errors(DEVICE) == want
    finally:
        moeroute.set_checks(False)
    torch.cuda.synchronize()
