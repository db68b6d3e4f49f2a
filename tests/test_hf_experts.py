"""The "moeroute" experts backend (moeroute.hf) on experts modules built with transformers' own
@use_experts_implementation decorator, for every combination of the flags it sets (has_gate,
has_bias, is_transposed, is_concatenated, has_post_expert_norm, a module's own _apply_gate),
against a per-token loop written here and against transformers' batched_mm backend: outputs and
the gradients of the hidden states, the routing weights and every expert parameter; expert-parallel
sentinel ids; no tokens; bfloat16; torch.compile of a whole model."""

import itertools

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402
from transformers import PretrainedConfig  # noqa: E402
from transformers.integrations.moe import use_experts_implementation  # noqa: E402

import moeroute.hf  # noqa: E402,F401  (registers the backend)

E, H, I = 5, 12, 6  # experts, hidden width, expert width


def experts_class(has_gate, has_bias, is_transposed, is_concatenated, has_post_expert_norm, own_gate):
    """An experts module with the decorator's flags; its own forward is the plain reference loop."""

    @use_experts_implementation(has_gate=has_gate, has_bias=has_bias, is_transposed=is_transposed,
                                is_concatenated=is_concatenated, has_post_expert_norm=has_post_expert_norm)
    class Experts(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts = E
            self.act_fn = nn.functional.silu if has_gate else nn.functional.gelu
            up = 2 * I if has_gate else I
            name = "gate_up_proj" if has_gate else "up_proj"
            shape = (E, H, up) if is_transposed else (E, up, H)
            setattr(self, name, nn.Parameter(torch.randn(*shape, dtype=torch.float64) / 3))
            self.down_proj = nn.Parameter(torch.randn(*((E, I, H) if is_transposed else (E, H, I)),
                                                      dtype=torch.float64) / 3)
            if has_bias:
                setattr(self, name + "_bias", nn.Parameter(torch.randn(E, up, dtype=torch.float64)))
                self.down_proj_bias = nn.Parameter(torch.randn(E, H, dtype=torch.float64))
            if has_post_expert_norm:
                self.post_expert_norm = nn.LayerNorm(H, dtype=torch.float64)

        def linear(self, x, weight, bias, e):
            w = weight[e] if is_transposed else weight[e].T
            return x @ w + (bias[e] if bias is not None else 0)

        def expert(self, x, e):
            if has_gate:
                gate_up = self.linear(x, self.gate_up_proj, getattr(self, "gate_up_proj_bias", None), e)
                if own_gate:
                    hidden = self._apply_gate(gate_up)
                elif is_concatenated:
                    hidden = self.act_fn(gate_up[..., :I]) * gate_up[..., I:]
                else:
                    hidden = self.act_fn(gate_up[..., ::2]) * gate_up[..., 1::2]
            else:
                hidden = self.act_fn(self.linear(x, self.up_proj, getattr(self, "up_proj_bias", None), e))
            out = self.linear(hidden, self.down_proj, getattr(self, "down_proj_bias", None), e)
            return self.post_expert_norm(out) if has_post_expert_norm else out

        def forward(self, hidden_states, top_k_index, top_k_weights):
            rows = []
            for t in range(hidden_states.shape[0]):
                y = torch.zeros_like(hidden_states[t])
                for s in range(top_k_index.shape[1]):
                    e = int(top_k_index[t, s])
                    if e < self.num_experts:  # (sentinels >= num_experts contribute nothing)
                        y = y + top_k_weights[t, s] * self.expert(hidden_states[t:t + 1], e)[0]
                rows.append(y)
            return torch.stack(rows) if rows else hidden_states.new_zeros(hidden_states.shape)

    if own_gate:  # a clamped gate on interleaved columns, like GPT-OSS's
        def _apply_gate(self, gate_up):
            gate, up = gate_up[..., ::2].clamp(max=0.7), gate_up[..., 1::2].clamp(-0.7, 0.7)
            return (up + 1) * gate * torch.sigmoid(gate * 1.7)
        Experts._apply_gate = _apply_gate
    return Experts


FLAGS = [dict(has_gate=g, has_bias=b, is_transposed=tr, is_concatenated=c, has_post_expert_norm=n, own_gate=o)
         for g, b, tr, c, n, o in itertools.product([True, False], [False, True], [False, True], [True, False],
                                                    [False, True], [False, True])
         if (g or (c and not o)) and not (o and c)]


def run(module, implementation, hidden, index, weights):
    module.config._experts_implementation = implementation
    hidden = hidden.detach().requires_grad_()
    weights = weights.detach().requires_grad_()
    out = module(hidden, index, weights)
    grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    module.zero_grad()
    out.backward(grad)
    grads = {"hidden": hidden.grad, "weights": weights.grad}
    grads.update({name: p.grad.clone() for name, p in module.named_parameters()})
    return out.detach(), grads


def picks(T, k, seed, sentinels=False):
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k, dtype=torch.long)
    if sentinels and T:
        index[::2, -1] = E  # expert-parallel sentinel: an expert this rank does not hold
    weights = torch.rand(T, k, dtype=torch.float64, generator=g)
    return index, weights


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
def test_backend_matches_the_reference_loop_and_batched_mm(flags):
    torch.manual_seed(0)
    module = experts_class(**flags)(PretrainedConfig())
    hidden = torch.randn(9, H, dtype=torch.float64)
    index, weights = picks(9, 3, seed=1, sentinels=True)
    expected = run(module, "eager", hidden, index, weights)
    # transformers' own backends split gate / up as [gate; up] halves with the default gate, whatever
    # is_concatenated says (its documented meaning, which moeroute and the loop above follow): compare
    # with batched_mm only where that flag does not matter.
    honours_layout = flags["is_concatenated"] or flags["own_gate"] or not flags["has_gate"]
    for implementation in ("moeroute", "batched_mm") if honours_layout else ("moeroute",):
        module._is_expert_parallel = implementation == "batched_mm"  # (batched_mm clamps sentinels only then)
        out, grads = run(module, implementation, hidden, index, weights)
        torch.testing.assert_close(out, expected[0], rtol=1e-10, atol=1e-10, msg=implementation)
        for name, grad in expected[1].items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-10, msg=f"{implementation}: {name}")


def test_no_tokens_and_all_sentinels():
    module = experts_class(True, True, False, True, False, False)(PretrainedConfig())
    module.config._experts_implementation = "moeroute"
    hidden = torch.randn(0, H, dtype=torch.float64)
    assert module(hidden, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.float64)).shape == (0, H)
    hidden = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    out = module(hidden, torch.full((3, 2), E), torch.ones(3, 2, dtype=torch.float64))
    assert out.abs().max() == 0
    out.sum().backward()
    assert hidden.grad is None or hidden.grad.abs().max() == 0  # (no pick reads a row: no path, or zeros)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_within_its_error(dtype):
    torch.manual_seed(0)
    module = experts_class(True, True, True, False, False, True)(PretrainedConfig())
    hidden = torch.randn(16, H, dtype=torch.float64)
    index, weights = picks(16, 2, seed=3)
    expected, _ = run(module, "eager", hidden, index, weights)
    module.to(dtype)
    module.config._experts_implementation = "moeroute"
    hidden = hidden.to(dtype).requires_grad_()
    out = module(hidden, index, weights.to(dtype))
    assert out.dtype == dtype
    # Inputs, weights and each matmul's output rounded to 8 (bfloat16) or 11 (float16) bits.
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * float(expected.abs().max()))
    out.float().square().sum().backward()
    assert hidden.grad.dtype == dtype and torch.isfinite(hidden.grad).all()


def test_whole_model_compiles_fullgraph_and_matches_eager():
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=8, num_experts_per_tok=2)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, 64, (2, 10))
    model.set_experts_implementation("eager")
    expected = model(ids, labels=ids)
    expected.loss.backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.set_experts_implementation("moeroute")
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(ids, labels=ids)
    out.loss.backward()
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
def test_few_rows_without_autograd(flags):
    """Decoding (no autograd, fewer rows than experts) runs only the experts that have rows."""
    torch.manual_seed(0)
    module = experts_class(**flags)(PretrainedConfig())
    hidden = torch.randn(1, H, dtype=torch.float64)
    index, weights = picks(1, 3, seed=2)
    index[0, 1] = E  # and a sentinel
    with torch.no_grad():
        module.config._experts_implementation = "eager"
        expected = module(hidden, index, weights)
        module.config._experts_implementation = "moeroute"
        torch.testing.assert_close(module(hidden, index, weights), expected, rtol=1e-10, atol=1e-10)
