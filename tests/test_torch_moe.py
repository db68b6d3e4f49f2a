"""moeroute.torch.MoE against a naive PyTorch reference at equal weights (forward and gradients)
for each routing configuration, the hierarchical case, the auxiliary machinery, and training."""

import copy

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import moeroute  # noqa: E402
from moeroute.torch import MoE, aux_loss  # noqa: E402

CONFIGS = [
    dict(),
    dict(activation="gelu"),
    dict(score="sigmoid", normalize="none", scale=2.0),
    dict(normalize="kept", capacity_factor=0.75),
    dict(capacity_factor=1.0, priority="score"),
    dict(capacity=3, priority="token"),
    dict(num_groups=2, topk_groups=1),
    dict(pad_to=4),
    dict(routing="expert", capacity_factor=1.0),
]


def reference_forward(layer, x):
    """The layer computed token by token with plain torch ops, on the layer's own picks."""
    tokens = x.reshape(-1, layer.hidden_size)
    logits = layer.gate_logits(tokens)
    plan = layer.plan(logits.detach())
    o = layer.route_options
    probs = torch.softmax(logits, -1) if layer.routing == "expert" or o.score == "softmax" else torch.sigmoid(logits)
    ids = plan.expert_ids.long()
    kept = (plan.dest >= 0) & (ids >= 0)
    raw = probs.gather(1, ids.clamp(min=0)) * (ids >= 0)
    if layer.routing == "expert" or o.normalize == "none":
        weights = raw
    elif o.normalize == "topk":
        weights = raw / raw.sum(1, keepdim=True)
    else:
        kept_raw = raw * kept
        weights = kept_raw / kept_raw.sum(1, keepdim=True).clamp_min(1e-30)
    if layer.routing == "token":
        weights = weights * o.scale
    weights = weights * kept
    out = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        for s in range(ids.shape[1]):
            if kept[t, s]:
                out[t] = out[t] + weights[t, s] * layer.experts.expert(int(ids[t, s]), tokens[t:t + 1])[0]
    return out.reshape(x.shape)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_layer_matches_the_naive_reference(config):
    torch.manual_seed(0)
    layer = MoE(8, 4, 2, ffn_size=12, **config).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = layer(x)
    torch.testing.assert_close(y, reference_forward(layer, x_ref))
    grad = torch.randn_like(y)
    y.backward(grad)
    got = [x.grad] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    reference_forward(layer, x_ref).backward(grad)
    want = [x_ref.grad] + [p.grad for p in layer.parameters()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


COMPILE_CONFIGS = [
    dict(load_balancing_coef=0.01, z_loss_coef=1e-3),
    dict(normalize="kept", capacity_factor=1.0, priority="score", pad_to=4),
    dict(score="sigmoid", num_groups=2, topk_groups=1, bias_update_rate=0.1, importance_coef=0.01),
    dict(routing="expert", capacity_factor=1.0, activation="gelu"),
]


@pytest.mark.parametrize("config", COMPILE_CONFIGS, ids=str)
def test_layer_compiles_fullgraph_and_matches_eager(config):
    # Two training steps (the selection bias moves in between): output, every gradient, the bias
    # and the statistics equal eager mode's.
    torch._dynamo.reset()
    torch.manual_seed(4)
    layer = MoE(16, 4, 2, ffn_size=24, **config).train()
    x = torch.randn(40, 16)
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(layer)
        run = torch.compile(model, fullgraph=True) if compiled else model
        out = []
        for _ in range(2):
            xx = x.clone().requires_grad_(True)
            y = run(xx)
            grads = torch.autograd.grad(y.square().sum() + model.aux_loss, (xx, *model.parameters()))
            out += [y.detach(), *grads, model.expert_bias.clone(), model.stats.tokens_per_expert.clone()]
        results.append(out)
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager)


def test_hierarchical_moe():
    torch.manual_seed(1)
    inner = [MoE(8, 3, 1, ffn_size=8).double() for _ in range(4)]
    layer = MoE(8, 4, 2, experts=inner).double()
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, reference_forward(layer, x.detach()))
    y.square().sum().backward()
    assert all(m.router.weight.grad is not None for m in inner)
    assert all(m.stats is not None for m in inner)


def test_aux_losses_stats_and_bias_update():
    torch.manual_seed(2)
    layer = MoE(8, 4, 2, ffn_size=8, noisy_gating=True, jitter=0.01, bias_update_rate=0.1,
                load_balancing_coef=0.01, z_loss_coef=1e-3, importance_coef=0.01, noisy_load_coef=0.01)
    layer.train()
    x = torch.randn(64, 8)
    y = layer(x)
    assert set(layer.losses) == {"load_balancing", "z_loss", "importance", "noisy_load"}
    assert layer.aux_loss.requires_grad
    (y.square().mean() + aux_loss(layer)).backward()
    assert layer.noise.weight.grad is not None and layer.router.weight.grad is not None
    assert int(layer.stats.tokens_per_expert.sum()) == 64 * 2 - layer.stats.num_dropped
    load = layer.stats.assigned_per_expert.float()
    expected_sign = torch.sign(load.mean() - load)
    torch.testing.assert_close(layer.expert_bias, 0.1 * expected_sign)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))  # no noise, no jitter in eval mode


def test_layer_dtypes_and_errors():
    layer = MoE(8, 4, 2, ffn_size=8).to(torch.bfloat16)
    assert layer(torch.randn(6, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(moeroute.ArgumentError, match="routing"):
        MoE(8, 4, routing="nope")
    with pytest.raises(moeroute.ArgumentError, match="experts"):
        MoE(8, 4, experts=[torch.nn.Identity()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_layer_edge_sizes_forward_and_backward(dtype):
    # No tokens (a .sum() gradient is then an empty stride-0 tensor, which grouped_mm's backward
    # rejects unless made dense), one expert with k = E, and a batch of 3 x 5 tokens.
    torch.manual_seed(5)
    for experts, k, shape in ((4, 2, (0, 8)), (4, 2, (2, 0, 8)), (1, 1, (6, 8)), (4, 4, (3, 5, 8))):
        layer = MoE(8, experts, k, ffn_size=8).to(dtype).train()
        x = torch.randn(*shape).to(dtype).requires_grad_(True)
        y = layer(x)
        assert y.shape == x.shape and y.dtype == dtype
        y.float().sum().backward()
        assert x.grad.shape == x.shape and torch.isfinite(x.grad.float()).all()
        for p in layer.parameters():  # (the per-segment loop leaves weights no token reached at None)
            assert p.grad is None or torch.isfinite(p.grad.float()).all()
            if x.numel() == 0:
                assert p.grad is None or not p.grad.any()
        if dtype == torch.float32:  # grouped_mm: every weight has a gradient, zero without tokens
            assert all(p.grad is not None for p in layer.parameters())


def test_training_loss_falls():
    torch.manual_seed(3)
    teacher = torch.randn(8, 8)
    x = torch.randn(256, 8)
    target = torch.tanh(x @ teacher)
    layer = MoE(8, 4, 2, ffn_size=16, load_balancing_coef=0.01)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(layer(x), target)
        (loss + layer.aux_loss).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fused_gate_backward_matches_autograd():
    # The router gate and permute's rows as one node: gradcheck in float64 for each output used
    # alone, both, and a non-contiguous rows gradient (each output is consumed by an op that hands
    # the node a fresh gradient, as permute does in MoE).
    from moeroute.torch._gate import gate_and_rows
    torch.manual_seed(5)
    tokens = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    uses = {
        "both": lambda t, w: (lambda lg, rows: (lg * 1.5, rows * 2.0))(*gate_and_rows(t, w)),
        "logits only": lambda t, w: gate_and_rows(t, w)[0] * 1.5,
        "rows only": lambda t, w: gate_and_rows(t, w)[1] * 2.0,
        "rows transposed": lambda t, w: (lambda lg, rows: (lg * 1.5, rows.t() * 2.0))(*gate_and_rows(t, w)),
    }
    for name, fn in uses.items():
        assert torch.autograd.gradcheck(fn, (tokens, weight)), name
    logits, rows = gate_and_rows(tokens, weight)
    assert type(logits.grad_fn).__name__ == "_GateAndRowsBackward"
    with torch.no_grad():  # nothing to record: the plain ops
        logits, rows = gate_and_rows(tokens, weight)
        assert rows is tokens
    # Tokens without a gradient: plain ops, so that permute's rows need no gradient either.
    logits, rows = gate_and_rows(tokens.detach(), weight)
    assert logits.requires_grad and not rows.requires_grad


def test_layer_uses_the_fused_gate_only_for_a_plain_linear_router():
    torch.manual_seed(6)
    layer = MoE(8, 4, 2, ffn_size=12)
    hooked = copy.deepcopy(layer)
    calls = []
    hooked.router.register_forward_hook(lambda module, args, out: calls.append(1))
    x = torch.randn(20, 8)
    for x_grad in (True, False):
        grads = []
        for model in (layer, hooked):
            xx = x.clone().requires_grad_(x_grad)
            y = model(xx)
            grads.append(torch.autograd.grad(y.square().sum(), ((xx,) if x_grad else ()) + tuple(model.parameters())))
        for fused, plain in zip(*grads):
            torch.testing.assert_close(fused, plain)
    assert calls == [1, 1]  # the hooked router ran as a module (not fused), once per forward


@pytest.mark.parametrize("kwargs, name", [
    (dict(hidden_size=0, num_experts=4), "hidden_size"), (dict(hidden_size=8, num_experts=0), "num_experts"),
    (dict(hidden_size=8, num_experts=4, top_k=6), "top_k"), (dict(hidden_size=8, num_experts=4, ffn_size=0), "ffn_size"),
    (dict(hidden_size=8, num_experts=4, activation="relu"), "activation"),
    (dict(hidden_size=8, num_experts=4, jitter=-0.1), "jitter"), (dict(hidden_size=8, num_experts=4, jitter=1.0), "jitter"),
    (dict(hidden_size=8, num_experts=4, bias_update_rate=float("nan")), "bias_update_rate"),
    (dict(hidden_size=8, num_experts=4, bias_update_rate=-1.0), "bias_update_rate"),
    (dict(hidden_size=8, num_experts=4, z_loss_coef=float("inf")), "z_loss_coef"),
    (dict(hidden_size=8, num_experts=4, capacity=2**70), "capacity"),
    (dict(hidden_size=8, num_experts=4, score="relu"), "score"),
])
def test_constructor_arguments_are_checked(kwargs, name):
    with pytest.raises(moeroute.MoerouteError, match=rf"\b{name}\b"):
        MoE(**kwargs)


def test_forward_checks_its_input():
    layer = MoE(hidden_size=8, num_experts=4)
    for bad in (torch.randn(2, 3, 16), torch.randn(2, 3, 4), torch.randn(16), torch.tensor(1.0)):
        with pytest.raises(moeroute.ShapeError, match=r"\bx\b.*hidden_size"):
            layer(bad)
    with pytest.raises(moeroute.DTypeError, match=r"\bx\b"):
        layer(torch.randn(2, 8, dtype=torch.float64))


def test_too_many_tokens_raise_before_the_router_runs():
    layer = MoE(hidden_size=1, num_experts=2, top_k=1)
    calls = []
    layer.router.register_forward_hook(lambda *_: calls.append(1))
    huge = torch.zeros(1, 1).expand(2**31, 1)  # no memory: a stride-0 view
    with pytest.raises(moeroute.IndexOverflowError):
        layer(huge)
    assert not calls
