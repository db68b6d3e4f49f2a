"""The torch front: tensors in and out, agreement with the NumPy path for every dtype, gradcheck in
float64, torch.library.opcheck for every custom op, torch.compile(fullgraph=True) == eager."""

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moeroute  # noqa: E402
import moeroute.torch  # noqa: E402
from moeroute.torch._convert import to_storage  # noqa: E402

TORCH_DTYPES = {
    "float32": (torch.float32, np.float32),
    "float64": (torch.float64, np.float64),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, ml_dtypes.bfloat16),
}
ROUTE_OPTIONS = [
    dict(),
    dict(score="sigmoid", normalize="none", scale=2.5),
    dict(normalize="kept", capacity=3),
    dict(capacity_factor=1.0, priority="score"),
    dict(capacity=2, priority="token", normalize="topk"),
    dict(num_groups=2, topk_groups=1, bias=[0.1, -0.2, 0.0, 0.3, 0.2, -0.1]),
    dict(pad_to=4),
]


def tensor_and_array(shape, name, seed=0, requires_grad=False):
    torch_dtype, np_dtype = TORCH_DTYPES[name]
    values = np.random.default_rng(seed).standard_normal(shape)
    array = values.astype(np_dtype)
    t = torch.from_numpy(array.astype(np.float64)).to(torch_dtype)
    return t.requires_grad_(requires_grad), array


def as_numpy(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("options", ROUTE_OPTIONS, ids=str)
def test_route_matches_numpy(dtype, options):
    logits, array = tensor_and_array((12, 6), dtype)
    plan, ref = moeroute.route(logits, 2, **options), moeroute.route(array, 2, **options)
    for name in ("expert_ids", "dest", "src", "expert_offsets", "tokens_per_expert", "assigned_per_expert"):
        np.testing.assert_array_equal(getattr(plan, name).numpy(), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(plan.weights.detach().numpy(), ref.weights)
    np.testing.assert_array_equal(plan.probs.detach().numpy(), ref.probs)
    assert plan.capacity == ref.capacity and plan.num_rows == ref.num_rows


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_permute_combine_and_gradients_match_numpy(dtype):
    logits, logits_np = tensor_and_array((10, 5), dtype, seed=1)
    x, x_np = tensor_and_array((10, 7), dtype, seed=2, requires_grad=True)
    plan = moeroute.route(logits, 2, capacity=3)
    ref = moeroute.route(logits_np, 2, capacity=3)
    xp = moeroute.permute(x, plan)
    np.testing.assert_array_equal(as_numpy(xp), moeroute.permute(x_np, ref))
    y = moeroute.combine(xp, plan)
    np.testing.assert_array_equal(as_numpy(y), moeroute.combine(moeroute.permute(x_np, ref), ref))
    grad_y, grad_y_np = tensor_and_array((10, 7), dtype, seed=3)
    y.backward(grad_y)
    grad_yp_np, _ = moeroute.combine_backward(grad_y_np, moeroute.permute(x_np, ref), ref)
    np.testing.assert_array_equal(as_numpy(x.grad), moeroute.permute_backward(grad_yp_np, ref))


def test_expert_choice_matches_numpy_and_differentiates():
    logits, array = tensor_and_array((9, 3), "float64", requires_grad=True)
    plan, ref = moeroute.expert_choice(logits, capacity_factor=1.5), moeroute.expert_choice(array, capacity_factor=1.5)
    np.testing.assert_array_equal(plan.src.numpy(), ref.src)
    assert plan.capacity == ref.capacity
    grad = np.random.default_rng(4).standard_normal(ref.weights.shape)
    plan.weights.backward(torch.from_numpy(grad))
    np.testing.assert_allclose(logits.grad.numpy(), moeroute.route_backward(grad, ref, array), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("options", ROUTE_OPTIONS, ids=str)
def test_gradcheck_route(options):
    logits = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)

    def weights_and_probs(l):
        plan = moeroute.route(l, 2, **options)
        return plan.weights, plan.probs

    assert torch.autograd.gradcheck(weights_and_probs, (logits,), eps=1e-6, atol=1e-7)


def test_gradcheck_expert_choice_permute_combine():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda l: moeroute.expert_choice(l, capacity=3).weights, (logits,))
    plan = moeroute.route(logits.detach(), 2, capacity=3)
    x = torch.randn(8, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: moeroute.permute(x, plan), (x,))
    yp = torch.randn(plan.num_rows, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(8, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda yp, w: moeroute.combine(yp, plan, w), (yp, w))


def test_gradients_reach_logits_through_weights_and_losses():
    logits = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(16, 3, dtype=torch.float64)
    plan = moeroute.route(logits, 2)
    loss = moeroute.combine(moeroute.permute(x, plan), plan).square().sum()
    loss = loss + moeroute.losses.load_balancing_loss(plan) + moeroute.losses.z_loss(logits)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_opcheck_every_op():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(8, 4, generator=gen, requires_grad=True)
    plan = moeroute.route(logits.detach(), 2, capacity=3)
    x = torch.randn(8, 5, generator=gen, requires_grad=True)
    yp = torch.randn(plan.num_rows, 5, generator=gen, requires_grad=True)
    w = plan.weights.detach().clone().requires_grad_(True)
    cases = [
        (torch.ops.moeroute.route.default, (logits, 2, "softmax", "topk", 1.0, None, None, None, 3, None, 0, 1, "slot", 1)),
        (torch.ops.moeroute.route.default, (logits, 2, "sigmoid", "kept", 1.5, None, 2, 1, None, None, 0, 1, "slot", 2)),
        (torch.ops.moeroute.expert_choice.default, (logits, None, 1.0)),
        (torch.ops.moeroute.permute.default, (x, plan.src, plan.dest)),
        (torch.ops.moeroute.permute_backward.default, (yp.detach(), plan.dest)),
        (torch.ops.moeroute.combine.default, (yp, plan.dest, plan.src, w)),
        (torch.ops.moeroute.combine_backward.default, (x.detach(), yp.detach(), plan.dest, plan.src, w.detach())),
        (torch.ops.moeroute.route_backward.default,
         (w.detach(), None, plan.probs.detach(), plan.expert_ids, plan.dest, "softmax", "topk", 1.0)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    def layer(logits, x):
        plan = moeroute.route(logits, 2, capacity_factor=1.25)
        y = moeroute.combine(moeroute.permute(x, plan) * 2.0, plan)
        return y.square().sum() + moeroute.losses.load_balancing_loss(plan)

    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(32, 8, generator=gen)
    x = torch.randn(32, 16, generator=gen)
    results = []
    for fn in (layer, torch.compile(layer, fullgraph=True)):
        l, xx = logits.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out = fn(l, xx)
        out.backward()
        results.append((out.detach(), l.grad, xx.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager)


def test_permute_shared_sums_the_gradients_of_its_uses_in_permute_backward():
    # One output per use of the permuted rows; the fused backward gives the bits of adding the
    # uses' gradients first (float32), takes a missing one as zero and passes gradcheck.
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(40, 24, generator=gen, requires_grad=True)
    plan = moeroute.route(torch.randn(40, 8, generator=gen), 3, capacity_factor=0.8, pad_to=4)
    outs = moeroute.torch.permute_shared(x, plan, 3)
    assert len(outs) == 3 and all(o.data_ptr() == outs[0].data_ptr() for o in outs)
    assert torch.equal(outs[0], moeroute.permute(x.detach(), plan))
    grads = [torch.randn(plan.num_rows, 24, generator=gen) for _ in outs]
    (got,) = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, grads)), x)
    assert torch.equal(got, moeroute.permute_backward(grads[0] + grads[1] + grads[2], plan))
    a, _b = moeroute.torch.permute_shared(x, plan, 2)
    (got,) = torch.autograd.grad((a * grads[0]).sum(), x)
    assert torch.equal(got, moeroute.permute_backward(grads[0], plan))
    xb = x.detach().to(torch.bfloat16).requires_grad_(True)
    outs = moeroute.torch.permute_shared(xb, plan, 2)
    (got,) = torch.autograd.grad(sum((o * g.to(torch.bfloat16)).sum() for o, g in zip(outs, grads)), xb)
    want = moeroute.permute_backward(grads[0].bfloat16().float() + grads[1].bfloat16().float(), plan)
    torch.testing.assert_close(got.float(), want, rtol=2 ** -8, atol=1e-6)
    x64 = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    plan64 = moeroute.route(torch.randn(9, 4, dtype=torch.float64), 2, capacity=4)

    def uses_twice(x):
        a, b = moeroute.torch.permute_shared(x, plan64, 2)
        return a.sin() * b

    assert torch.autograd.gradcheck(uses_twice, (x64,))


def test_moe_layer_gradients_with_shared_rows_match_a_single_use():
    # MoE hands its SwiGLU experts one view of the permuted rows per projection: the same
    # gradients, bit for bit in float32, as one tensor used twice.
    from moeroute.torch import MoE
    from moeroute.torch.experts import StackedFFN

    torch.manual_seed(13)
    layer = MoE(16, 8, 2, ffn_size=24)
    x = torch.randn(50, 16)
    results = []
    for uses in (None, 1):
        original = StackedFFN.row_uses
        if uses is not None:
            StackedFFN.row_uses = lambda self, dtype, device: uses
        try:
            xx = x.clone().requires_grad_(True)
            y = layer(xx)
            results.append(torch.autograd.grad(y.square().sum(), (xx, *layer.parameters())))
        finally:
            StackedFFN.row_uses = original
    assert layer.experts.row_uses(torch.float32, x.device) == 2
    for shared, single in zip(*results):
        assert torch.equal(shared, single)


def test_double_backward_raises_a_clear_error():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    plan = moeroute.route(torch.randn(6, 4, dtype=torch.float64), 2)
    y = moeroute.combine(moeroute.permute(x, plan), plan)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="(?i)autograd|differentiable|backward"):
        grad.sum().backward()


def test_non_contiguous_inputs_and_zero_copy_storage():
    base = torch.randn(6, 8)
    logits = base[:, ::2]
    assert not logits.is_contiguous()
    plan = moeroute.route(logits, 2)
    ref = moeroute.route(logits.contiguous().numpy(), 2)
    np.testing.assert_array_equal(plan.expert_ids.numpy(), ref.expert_ids)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.randn(4, 3).to(dtype)
        array, _ = to_storage(t, "x", 2)
        assert array.__array_interface__["data"][0] == t.data_ptr()


def test_torch_errors_name_the_argument():
    with pytest.raises(moeroute.DTypeError, match="logits"):
        moeroute.route(torch.zeros(4, 3, dtype=torch.int64), 1)
    with pytest.raises(moeroute.ShapeError, match="logits"):
        moeroute.route(torch.zeros(4), 1)
    with pytest.raises(moeroute.ArgumentError, match=r"\bk\b"):
        moeroute.route(torch.zeros(4, 3), 4)
    plan = moeroute.route(torch.zeros(4, 3), 1)
    with pytest.raises(moeroute.ShapeError, match=r"\bx\b"):
        moeroute.permute(torch.zeros(5, 2), plan)
    with pytest.raises(moeroute.DTypeError, match="weights"):
        moeroute.combine(torch.zeros(4, 2), plan, [[1.0]] * 4)
    with pytest.raises(moeroute.ShapeError, match="weights"):
        moeroute.combine(torch.zeros(4, 2), plan, torch.ones(4, 2))
    with pytest.raises(moeroute.DTypeError, match="weights"):
        moeroute.combine_backward(torch.zeros(4, 2), torch.zeros(4, 2), plan, [[1.0]] * 4)
    with pytest.raises(moeroute.LogitsError, match="logits"):
        moeroute.route(torch.full((2, 3), float("nan")), 1)
    with pytest.raises(moeroute.DTypeError, match="bias"):
        moeroute.route(torch.zeros(4, 3), 1, bias=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(moeroute.ShapeError, match="bias"):
        moeroute.route(torch.zeros(4, 3), 1, bias=torch.zeros(4))
    with pytest.raises(moeroute.ArgumentError, match="bias"):
        moeroute.route(torch.zeros(4, 3), 1, bias=torch.tensor([0.0, float("inf"), 0.0]))
    for logits in (torch.zeros(4, 3), np.zeros((4, 3), np.float32)):  # a tensor bias, torch or NumPy logits
        plan = moeroute.route(logits, 1, bias=torch.tensor([0.0, 1.0, 0.0]))
        assert np.asarray(plan.expert_ids).ravel().tolist() == [1, 1, 1, 1]


def test_core_layout_matches_the_plans():
    """The layout the torch front and the fake implementations ask the core for is the plan's."""
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=30)
    @given(st.integers(0, 300), st.integers(1, 64), st.integers(1, 8), st.none() | st.integers(0, 50),
           st.none() | st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0, 3.7]), st.integers(0, 9),
           st.integers(1, 8), st.integers(1, 5))
    def check(t, e, k, capacity, factor, min_capacity, multiple, pad_to):
        if capacity is not None and factor is not None:
            factor = None
        options = moeroute.RouteOptions(min(k, e), capacity=capacity, capacity_factor=factor,
                                        min_capacity=min_capacity, capacity_multiple=multiple, pad_to=pad_to)
        plan = moeroute.route_with_options(torch.zeros(t, e), options)
        assert moeroute._core.route_layout(t, e, options) == (plan.capacity, plan.num_rows)

    check()


def test_backward_functions_take_tensors():
    logits, logits_np = tensor_and_array((8, 4), "float32", seed=9)
    plan, ref = moeroute.route(logits, 2, capacity=3), moeroute.route(logits_np, 2, capacity=3)
    grad_xp, grad_xp_np = tensor_and_array((plan.num_rows, 5), "float32", seed=10)
    np.testing.assert_array_equal(moeroute.permute_backward(grad_xp, plan).numpy(),
                                  moeroute.permute_backward(grad_xp_np, ref))
    grad_y, grad_y_np = tensor_and_array((8, 5), "float32", seed=11)
    got = moeroute.combine_backward(grad_y, grad_xp, plan)
    want = moeroute.combine_backward(grad_y_np, grad_xp_np, ref)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w)
    grad_w = torch.from_numpy(want[1])
    np.testing.assert_array_equal(moeroute.route_backward(grad_w, plan, logits).numpy(),
                                  moeroute.route_backward(want[1], ref, logits_np))


def test_plan_allocations_follow_the_field_declaration():
    """The fake plan and the CUDA backend's allocations (one per field, or packed by kind) have the
    dtypes and shapes moeroute.plan.PLAN_FIELDS declares (checked on CPU tensors: they only allocate)."""
    from moeroute.plan import PLAN_FIELDS, field_shapes
    from moeroute.torch import _cuda
    from moeroute.torch._convert import empty_plan

    kinds = {"float": torch.float32, "int32": torch.int32, "int64": torch.int64}
    logits = torch.zeros(5, 3)
    for allocate in (_cuda._plan_outputs, _cuda._packed_plan_outputs):
        outputs, workspace = allocate(logits, 2, 11, 1000)
        assert workspace.numel() * workspace.element_size() >= 1000
        if allocate is _cuda._packed_plan_outputs:  # the workspace follows the int32 fields, 256-byte aligned
            assert (workspace.data_ptr() - outputs[2].data_ptr()) % 256 == 0
        for field, shape, tensor in zip(PLAN_FIELDS, field_shapes(5, 3, 2, 11), outputs):
            assert (tuple(tensor.shape), tensor.dtype) == (shape, kinds[field.kind]), field
    for field, tensor in zip(PLAN_FIELDS, empty_plan(logits.double(), 2, 11)):
        assert tensor.dtype == (torch.float64 if field.kind == "float" else kinds[field.kind]), field


def test_core_stub_lists_the_plan_fields_in_order():
    """_core.pyi's description of the plan tuple names the declared fields, in order, with their shapes."""
    import pathlib
    import re
    from moeroute.plan import PLAN_FIELDS

    stub = (pathlib.Path(moeroute.__file__).parent / "_core.pyi").read_text()
    block = stub[stub.index("# A plan as route / expert_choice return it"):stub.index("PlanTuple =")]
    described = [(name, tuple(d.replace(" ", "") for d in dims.split(",")))
                 for name, dims in re.findall(r"(\w+)\s*(?:#\s*)?\[([^\]]+)\]", block)]
    assert described == [(f.name, f.shape) for f in PLAN_FIELDS]


def test_hostile_tensors_and_options_raise_moeroute_errors():
    logits, logits_np = tensor_and_array((8, 4), "float32", seed=12)
    plan, ref = moeroute.route(logits, 2, capacity=3), moeroute.route(logits_np, 2, capacity=3)
    x = torch.randn(8, 5)
    with pytest.raises(moeroute.DTypeError, match=r"\bx\b.*strided"):
        moeroute.permute(x.to_sparse(), plan)
    with pytest.raises(moeroute.ArgumentError, match=r"\bcapacity\b"):
        torch.ops.moeroute.route(logits, 2, "softmax", "topk", 1.0, None, None, None, -5, None, 0, 1, "slot", 1)
    with pytest.raises(moeroute.ArgumentError, match=r"\bscale\b"):
        moeroute.route(logits, 2, scale=1e308)
    yp = torch.randn(plan.num_rows, 5)
    with pytest.raises(moeroute.DTypeError, match=r"\bgrad_y\b"):
        moeroute.combine_backward(torch.randn(8, 5, dtype=torch.float64), yp, plan)
    with pytest.raises(moeroute.DTypeError, match=r"\bweights\b"):
        moeroute.combine(yp, plan, plan.weights.to(torch.int32))
    with pytest.raises(moeroute.DTypeError, match=r"\bgrad_weights\b"):
        moeroute.route_backward(plan.weights.to(torch.int32), plan, logits)
    # a lazily negated view is read by value
    negated = torch._neg_view(x)
    assert negated.is_neg()
    torch.testing.assert_close(moeroute.permute(negated, plan), moeroute.permute(-x, plan), rtol=0, atol=0)
    np.testing.assert_array_equal(plan.dest.numpy(), ref.dest)


def test_mixing_numpy_and_torch_says_so():
    logits, logits_np = tensor_and_array((6, 4), "float32", seed=13)
    numpy_plan, torch_plan = moeroute.route(logits_np, 2), moeroute.route(logits, 2)
    mixed = "different frameworks"
    with pytest.raises(moeroute.DTypeError, match=mixed):
        moeroute.permute(torch.ones(6, 3), numpy_plan)
    with pytest.raises(moeroute.DTypeError, match=mixed):
        moeroute.permute(np.ones((6, 3), np.float32), torch_plan)
    with pytest.raises(moeroute.DTypeError, match=mixed):
        moeroute.combine(np.ones((torch_plan.num_rows, 3), np.float32), torch_plan)
    with pytest.raises(moeroute.DTypeError, match="RoutingPlan"):
        moeroute.losses.load_balancing_loss(logits_np)
    with pytest.raises(moeroute.ShapeError, match=r"\(T, E\).*reshape\(-1, 4\)"):
        moeroute.route(logits.reshape(2, 3, 4), 2)
    with pytest.raises(moeroute.DeviceError, match="meta"):
        moeroute.route(torch.zeros(3, 4, device="meta"), 2)
    # the conversions the messages name
    np.testing.assert_array_equal(moeroute.permute(np.ones((6, 3), np.float32), torch_plan.numpy()),
                                  moeroute.permute(np.ones((6, 3), np.float32), numpy_plan))
    moved = moeroute.torch.plan_as_tensors(numpy_plan, "cpu")
    assert torch.equal(moeroute.permute(torch.ones(6, 3), moved), moeroute.permute(torch.ones(6, 3), torch_plan))
