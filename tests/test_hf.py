"""transformers MoE families on moeroute: each replacement router against its original module, and tiny
models of ten families, saved and loaded back, on moeroute (experts_implementation="moeroute",
moeroute.hf.patch, or only the routers replaced) against transformers' eager backend: logits, loss,
every parameter's gradient, greedy generation, bfloat16, one fine-tuning step with the router aux loss,
state_dict and save/load.

Ties: moeroute picks, among equal selection keys, the lower expert index (slots in descending key
order); torch.topk's choice among equal values is unspecified (on the CPU it is often not the lower
index), and DeepSeek-V3-style routers return their picks unsorted. So the tests compare the picks as
sets and the weights per expert, and where exact ties are built on purpose (test_router_ties) they
check moeroute's rule and that the tied weights are equal. In bfloat16, logits tie exactly far more
often, and one token routed to a different (tied) expert changes the later tokens through attention,
so the bfloat16 model tests bound the error against a float32 reference by twice eager's own
bfloat16 error instead of comparing to eager's bfloat16 output, and the bfloat16 router test builds
logits without ties."""

import copy
import doctest
import importlib
import inspect
import logging
import pickle
import re
import textwrap
import types

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import hf_models  # noqa: E402
import moeroute.hf  # noqa: E402
from moeroute.hf import _patch, _routers  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The models are tiny: one thread is as fast, and is not slowed down by other processes on
    the cores (OpenMP threads waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# Routers, one module against its original
# ---------------------------------------------------------------------------------------------------

ROUTER_CLASSES = sorted(_routers.ROUTERS, key=lambda key: key[1])
NUM_TOKENS, HIDDEN, NUM_EXPERTS = 64, 16, 8


def router_class(key):
    module, name = key
    return getattr(importlib.import_module(module), name)


def router_config(kind, norm_topk_prob=True):
    """A config namespace with every attribute the registered routers read: 8 experts; top-4 in 4
    groups of which 2 stay for the DeepSeek-V3 kind (groups scored by their 2 best keys in both)."""
    k = 4 if kind is _routers.DEEPSEEK else 2
    return types.SimpleNamespace(
        num_experts_per_tok=k, num_local_experts=NUM_EXPERTS, num_experts=NUM_EXPERTS, moe_num_experts=NUM_EXPERTS,
        moe_topk=k, hidden_size=HIDDEN, norm_topk_prob=norm_topk_prob, routed_scaling_factor=2.5, n_group=4,
        topk_group=2, moe_norm_min=1e-12, hidden_act="silu", initializer_range=0.02)


def router_weight(router):
    return router.wg.weight if hasattr(router, "wg") else router.weight


def selection_bias(router):
    if hasattr(router, "moe_statics"):
        return router.moe_statics.e_score_correction_bias
    return getattr(router, "e_score_correction_bias", None)


def make_router(key, norm_topk_prob=True, seed=0):
    """The original router with random weights (and bias), and its patched deep copy."""
    kind = _routers.ROUTERS[key]
    torch.manual_seed(seed)
    original = router_class(key)(router_config(kind, norm_topk_prob))
    with torch.no_grad():
        router_weight(original).normal_(0.0, 0.6)
        if selection_bias(original) is not None:
            selection_bias(original).normal_(0.0, 0.1)
        if isinstance(getattr(original, "bias", None), torch.Tensor):
            original.bias.normal_(0.0, 0.5)
    patched = copy.deepcopy(original)
    assert _routers.replace(patched) is None
    assert isinstance(patched, type(original)) and isinstance(patched, _routers.MoerouteRouter)
    return original, patched


def dense(weights, index, num_experts=NUM_EXPERTS):
    """(T, E): each pick's weight at its expert (0 elsewhere), whatever the order of the slots."""
    return torch.zeros(*weights.shape[:-1], num_experts, dtype=weights.dtype).scatter(-1, index, weights)


def run_router(router, hidden, grad_seed=1):
    """The router's outputs, and the gradients of a loss on its weights and logits w.r.t. the
    hidden states and the router's parameters."""
    hidden = hidden.detach().clone().requires_grad_(True)
    logits, weights, index = router(hidden)
    generator = torch.Generator().manual_seed(grad_seed)
    g_weights = torch.randn(NUM_TOKENS, NUM_EXPERTS, generator=generator)
    g_logits = torch.randn(logits.shape, generator=generator)
    loss = (dense(weights, index).float() * g_weights).sum() + (logits.float() * g_logits).sum()
    loss.backward()
    grads = {"hidden_states": hidden.grad}
    grads.update({name: p.grad for name, p in router.named_parameters() if p.grad is not None})
    return (logits, weights, index), grads


def assert_same_outputs(got, expected, exact_logits=True):
    """Same types, shapes and dtypes; the same logits; the same picks as sets; the weights per expert
    within the rounding of their dtype."""
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape and g.device == e.device, (g.dtype, e.dtype, g.shape, e.shape)
    (logits, weights, index), (logits0, weights0, index0) = got, expected
    if exact_logits:
        assert torch.equal(logits, logits0)
    assert torch.equal(index.sort(-1).values, index0.sort(-1).values), "different picks"
    torch.testing.assert_close(dense(weights, index), dense(weights0, index0))


# Every router class with its config's norm_topk_prob on, and off where the family reads it.
ROUTER_CASES = [pytest.param(key, True, id=key[1]) for key in ROUTER_CLASSES] + [
    pytest.param(key, False, id=f"{key[1]}-no_norm") for key in ROUTER_CLASSES
    if _routers.ROUTERS[key] in (_routers.QWEN, _routers.DEEPSEEK)]


@pytest.mark.parametrize("key, norm_topk_prob", ROUTER_CASES)
def test_router_matches_original(key, norm_topk_prob):
    """float32: outputs, weights and gradients (hidden states, router weight) equal the original's
    within float32 rounding, for every registered router class."""
    original, patched = make_router(key, norm_topk_prob)
    hidden = torch.randn(NUM_TOKENS, HIDDEN, generator=torch.Generator().manual_seed(2))
    got, grads = run_router(patched, hidden)
    expected, grads0 = run_router(original, hidden)
    assert_same_outputs(got, expected)
    assert grads.keys() == grads0.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads0[name], rtol=1e-5, atol=1e-6, msg=name)
    assert original.state_dict().keys() == patched.state_dict().keys()
    # The slots are in descending order of the selection key, as torch.topk(sorted=True) leaves them
    # (the DeepSeek-V3 kind's original uses sorted=False: its order is unspecified).
    if _routers.ROUTERS[key] is not _routers.DEEPSEEK:
        assert torch.equal(got[2], expected[2])


def distinct_logit_hidden(dtype, seed=3):
    """Hidden states and a one-hot router weight giving each token's logits as a permutation of
    distinct bfloat16-exact values (no ties, in any dtype)."""
    generator = torch.Generator().manual_seed(seed)
    values = (torch.arange(NUM_EXPERTS, dtype=torch.float32) - NUM_EXPERTS / 2) * 0.375
    hidden = torch.randn(NUM_TOKENS, HIDDEN, generator=generator)
    for t in range(NUM_TOKENS):
        hidden[t, :NUM_EXPERTS] = values[torch.randperm(NUM_EXPERTS, generator=generator)]
    return hidden.to(dtype)


def one_hot_router_weight(router):
    with torch.no_grad():
        weight = router_weight(router)
        weight.zero_()
        weight[:, :NUM_EXPERTS] = torch.eye(NUM_EXPERTS, dtype=weight.dtype)
        if isinstance(getattr(router, "bias", None), torch.Tensor):
            router.bias.zero_()


@pytest.mark.parametrize("key", ROUTER_CLASSES, ids=lambda key: key[1])
def test_router_bfloat16(key):
    """bfloat16 router and hidden states (logits without ties): the same logits and picks, the
    weights within the rounding of the dtype the family returns them in, gradients close."""
    original, _ = make_router(key)
    one_hot_router_weight(original)
    original = original.to(torch.bfloat16)
    patched = copy.deepcopy(original)
    _routers.replace(patched)
    hidden = distinct_logit_hidden(torch.bfloat16)
    got, grads = run_router(patched, hidden)
    expected, grads0 = run_router(original, hidden)
    assert_same_outputs(got, expected)
    for name in grads:
        torch.testing.assert_close(grads[name].float(), grads0[name].float(), rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("key", ROUTER_CLASSES, ids=lambda key: key[1])
def test_router_under_bfloat16_autocast(key):
    """Under torch.autocast(bfloat16) (logits without ties): the original's dtypes (the logits
    bfloat16 where its linear is autocast), logits and picks; the weights within bfloat16 rounding."""
    original, patched = make_router(key)
    one_hot_router_weight(original)
    one_hot_router_weight(patched)
    hidden = distinct_logit_hidden(torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = patched(hidden), original(hidden)
    assert_same_outputs(got, expected)


@pytest.mark.parametrize("key", ROUTER_CLASSES, ids=lambda key: key[1])
def test_router_ties(key):
    """Exact ties (every logit equal, or the first half equal and the rest lower): moeroute picks
    the lower expert indices (0..k-1, slot order), the original some k of the tied experts (torch.topk
    leaves it unspecified); the weights, sorted, are equal."""
    original, patched = make_router(key)
    one_hot_router_weight(original)
    one_hot_router_weight(patched)
    for router in (original, patched):
        if selection_bias(router) is not None:
            with torch.no_grad():
                selection_bias(router).zero_()
    hidden = torch.zeros(NUM_TOKENS, HIDDEN)
    hidden[NUM_TOKENS // 2:, :NUM_EXPERTS // 2] = 1.0
    with torch.no_grad():
        _, weights, index = patched(hidden)
        _, weights0, index0 = original(hidden)
    k = index.shape[-1]
    assert torch.equal(index, torch.arange(k).expand_as(index))
    torch.testing.assert_close(weights.sort(-1).values, weights0.sort(-1).values)


@pytest.mark.parametrize("key", [("transformers.models.mixtral.modeling_mixtral", "MixtralTopKRouter"),
                                 ("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3TopkRouter"),
                                 ("transformers.models.gpt_oss.modeling_gpt_oss", "GptOssTopKRouter")],
                         ids=lambda key: key[1])
def test_patched_router_compiles_whole(key):
    """torch.compile(fullgraph=True) traces a patched router (moeroute.route is a custom op) and
    gives its eager outputs and gradients."""
    _, patched = make_router(key)
    hidden = torch.randn(NUM_TOKENS, HIDDEN, generator=torch.Generator().manual_seed(2))
    expected, grads0 = run_router(patched, hidden)
    patched.zero_grad()
    got, grads = run_router(torch.compile(patched, fullgraph=True, backend="aot_eager"), hidden)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    grads = {name.replace("_orig_mod.", ""): grad for name, grad in grads.items()}
    assert grads.keys() == grads0.keys()
    for name in grads0:
        torch.testing.assert_close(grads[name], grads0[name], msg=name)


def test_router_registry_is_by_identity():
    """A subclass of a recognised router (or another class of the same name) is not recognised; the
    registered classes of a kind share their forward, line for line."""
    mixtral = router_class(("transformers.models.mixtral.modeling_mixtral", "MixtralTopKRouter"))
    assert _routers.kind_of_class(mixtral) is _routers.MIXTRAL
    subclass = type("MixtralTopKRouter", (mixtral,), {"__module__": mixtral.__module__})
    assert _routers.kind_of_class(subclass) is None
    sources = {}
    for key, kind in _routers.ROUTERS.items():
        source = textwrap.dedent(inspect.getsource(router_class(key).forward))
        source = re.sub(r"\s*#.*", "", source)
        sources.setdefault(kind.forward, set()).add(source)
    for forward, variants in sources.items():
        assert len(variants) == 1, f"{forward.__name__}: the registered classes' forwards differ"


def test_deepseek_group_rule_that_cannot_map_is_left():
    """A DeepSeek-V3 group limit whose group score moeroute does not compute (top_k // topk_group
    != 2) is left to the original router, and patch says why."""
    key = ("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3TopkRouter")
    config = router_config(_routers.DEEPSEEK)
    config.num_experts_per_tok = 2  # max(1, 2 // 2) = 1 best key per group, not 2
    router = router_class(key)(config)
    reason = _routers.replace(router)
    assert reason is not None and "2 best" in reason and not isinstance(router, _routers.MoerouteRouter)
    config.topk_group = config.n_group = 1  # a single group: nothing to limit
    assert _routers.replace(router_class(key)(config)) is None


def test_patched_router_pickles_and_restores():
    key = ("transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeTopKRouter")
    original, patched = make_router(key)
    hidden = torch.randn(NUM_TOKENS, HIDDEN)
    for copied in (copy.deepcopy(patched), pickle.loads(pickle.dumps(patched))):
        assert type(copied) is type(patched)
        assert torch.equal(copied(hidden)[1], patched(hidden)[1])
    _routers.restore(patched)
    assert type(patched) is type(original)


# ---------------------------------------------------------------------------------------------------
# Whole models against transformers' eager backend
# ---------------------------------------------------------------------------------------------------

FAMILIES = list(hf_models.FAMILIES)
# How a model runs on moeroute: "routers" = patch(model, experts_implementation=None) (routers on
# moeroute.route, experts on eager); "moeroute" = from_pretrained(..., experts_implementation="moeroute");
# "patch" = patch(model) (both).
VARIANTS = ["routers", "moeroute", "patch"]


class Store:
    """The tiny models saved once per family, and eager's results on them (computed once)."""

    def __init__(self, root):
        self.root = root
        self.paths = {}
        self.references = {}

    def path(self, family):
        if family not in self.paths:
            path = self.root / family
            hf_models.build(family).save_pretrained(path)
            self.paths[family] = path
        return self.paths[family]

    def load(self, family, variant, dtype=torch.float32, device="cpu"):
        implementation = "moeroute" if variant == "moeroute" else "eager"
        model = transformers.AutoModelForCausalLM.from_pretrained(
            self.path(family), experts_implementation=implementation, attn_implementation="eager", dtype=dtype)
        model = model.to(device)
        if variant == "patch":
            moeroute.hf.patch(model)
        elif variant == "routers":
            moeroute.hf.patch(model, experts_implementation=None)
        replaced = any(isinstance(m, _routers.MoerouteRouter) for m in model.modules())
        assert replaced == (variant in ("routers", "patch"))
        assert model.config._experts_implementation == ("moeroute" if variant in ("moeroute", "patch") else "eager")
        return model.eval()

    def reference(self, family, what, compute):
        key = (family, what)
        if key not in self.references:
            self.references[key] = compute(self.load(family, "eager"))
        return self.references[key]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("hf_models"))


def assert_grads_close(grads, grads0, rtol=1e-4):
    """The same parameters have gradients; each within rtol of its largest entry (float32 sums over
    the batch in a different order)."""
    assert grads.keys() == grads0.keys()
    for name, g0 in grads0.items():
        scale = float(g0.abs().max()) + 1e-12
        error = float((grads[name].to(g0.device) - g0).abs().max())
        assert error <= rtol * scale, f"{name}: gradient off by {error:.3g} (largest entry {scale:.3g})"


def forward_backward(model, family, device="cpu"):
    """Logits, loss (with the router aux loss where the family has one) and every gradient."""
    input_ids, attention_mask = (t.to(device) for t in hf_models.batch())
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    model.zero_grad(set_to_none=True)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                   output_router_logits=family in hf_models.AUX_LOSS)
    output.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    aux = output.aux_loss.detach() if getattr(output, "aux_loss", None) is not None else None
    return output.logits.detach(), output.loss.detach(), aux, grads


def generate(model, device="cpu"):
    input_ids, attention_mask = (t.to(device) for t in hf_models.batch(seed=5, length=6))
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5,
                              do_sample=False).cpu()


def train_step(model, family):
    """One SGD step on the loss with the router aux loss enabled: the parameters after the step and
    the loss before and after it."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    input_ids, attention_mask = hf_models.batch(seed=7)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    losses = []
    for step in range(2):
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_router_logits=True)
        losses.append(output.loss.detach())
        if step == 0:
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    return torch.stack(losses), params


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_loss_and_gradients_match_eager(store, family, variant):
    logits0, loss0, aux0, grads0 = store.reference(family, "forward_backward", lambda m: forward_backward(m, family))
    logits, loss, aux, grads = forward_backward(store.load(family, variant), family)
    torch.testing.assert_close(logits, logits0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=1e-6)
    if aux0 is not None:
        torch.testing.assert_close(aux, aux0, rtol=1e-6, atol=1e-6)
    assert_grads_close(grads, grads0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_matches_eager(store, family, variant):
    tokens0 = store.reference(family, "generate", generate)
    assert torch.equal(generate(store.load(family, variant)), tokens0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_step_matches_eager(store, family, variant):
    losses0, params0 = store.reference(family, "train_step", lambda m: train_step(m, family))
    losses, params = train_step(store.load(family, variant), family)
    torch.testing.assert_close(losses, losses0, rtol=1e-5, atol=1e-5)
    assert losses[1] < losses[0]
    assert params.keys() == params0.keys()
    for name in params0:
        torch.testing.assert_close(params[name], params0[name], rtol=1e-5, atol=1e-5, msg=name)


def bfloat16_logits(model, device="cpu"):
    input_ids, attention_mask = (t.to(device) for t in hf_models.batch())
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float().cpu()


def assert_bfloat16_close(logits, logits_eager, logits_float32):
    """bfloat16 on moeroute within twice eager's own bfloat16 error (against float32), in the mean
    and in the 90th percentile (a tied pick decided the other way moves a few entries further)."""
    error = (logits - logits_float32).abs().flatten()
    error0 = (logits_eager - logits_float32).abs().flatten()
    assert error.mean() <= 2 * error0.mean() + 1e-3, (error.mean(), error0.mean())
    assert error.quantile(0.9) <= 2 * error0.quantile(0.9) + 1e-3, (error.quantile(0.9), error0.quantile(0.9))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_forward_within_half_precision_error(store, family, variant):
    logits_float32 = store.reference(family, "logits", bfloat16_logits)
    logits_eager = bfloat16_logits(store.load(family, "eager", torch.bfloat16))
    logits = bfloat16_logits(store.load(family, variant, torch.bfloat16))
    assert_bfloat16_close(logits, logits_eager, logits_float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_model_state_dict_saves_and_loads(store, family, tmp_path, caplog):
    """patch keeps every state_dict key and value; the patched model saves and loads back (as the
    original classes), with eager's logits; patch logs what it replaced."""
    original = store.load(family, "eager")
    with caplog.at_level(logging.INFO, logger="moeroute.hf"):
        patched = moeroute.hf.patch(store.load(family, "eager"))
    assert "replaced" in caplog.text
    routers = [m for m in patched.modules() if isinstance(m, _routers.MoerouteRouter)]
    assert routers, "no router replaced"
    state, state0 = patched.state_dict(), original.state_dict()
    assert list(state) == list(state0)
    assert all(torch.equal(state[name], state0[name]) for name in state0)
    patched.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="eager",
                                                               attn_implementation="eager").eval()
    assert not any(isinstance(m, _routers.MoerouteRouter) for m in loaded.modules())
    assert list(loaded.state_dict()) == list(state0)
    input_ids, attention_mask = hf_models.batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids, attention_mask=attention_mask).logits,
                                   original(input_ids=input_ids, attention_mask=attention_mask).logits)
    assert _patch.unpatch_routers(patched)
    assert not any(isinstance(m, _routers.MoerouteRouter) for m in patched.modules())


def test_patch_sets_the_experts_implementation_everywhere(store):
    model = moeroute.hf.patch(store.load("qwen2_moe", "eager"))
    assert model.config._experts_implementation == "moeroute"
    experts = [m for m in model.modules() if _patch._is_experts(m)]
    assert experts and all(m.config._experts_implementation == "moeroute" for m in experts)
    assert moeroute.hf.patch(model) is model  # patching again changes nothing


def test_patch_docstring_example():
    tests = [t for t in doctest.DocTestFinder().find(moeroute.hf.patch) if t.examples]
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert tests and runner.summarize(verbose=False).failed == 0


# ---------------------------------------------------------------------------------------------------
# CUDA twins
# ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("key", ROUTER_CLASSES, ids=lambda key: key[1])
def test_gpu_router_matches_original(key):
    original, patched = make_router(key)
    original, patched = original.cuda(), patched.cuda()
    hidden = torch.randn(NUM_TOKENS, HIDDEN, generator=torch.Generator().manual_seed(2)).cuda()
    with torch.no_grad():
        got, expected = patched(hidden), original(hidden)
    got = [t.cpu() for t in got]
    expected = [t.cpu() for t in expected]
    assert_same_outputs(got, expected)


@pytest.mark.parametrize("variant", ["moeroute", "patch"])
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_model_matches_eager(store, family, variant):
    """On CUDA: float32 logits, loss and gradients equal eager's on CUDA within float32 rounding, the
    same greedy tokens, and bfloat16 within twice eager's bfloat16 error."""
    eager = store.load(family, "eager", device="cuda")
    model = store.load(family, variant, device="cuda")
    logits0, loss0, aux0, grads0 = forward_backward(eager, family, "cuda")
    logits, loss, aux, grads = forward_backward(model, family, "cuda")
    torch.testing.assert_close(logits, logits0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, loss0, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, grads0, rtol=1e-3)
    assert torch.equal(generate(model, "cuda"), generate(eager, "cuda"))
    logits_float32 = bfloat16_logits(eager, "cuda")
    assert_bfloat16_close(bfloat16_logits(store.load(family, variant, torch.bfloat16, "cuda"), "cuda"),
                          bfloat16_logits(store.load(family, "eager", torch.bfloat16, "cuda"), "cuda"), logits_float32)


def test_supported_routers_lists_every_registered_class():
    listed = moeroute.hf.supported_routers()
    assert len(listed) == len(_routers.ROUTERS) >= 41
    assert listed["transformers.models.mixtral.modeling_mixtral.MixtralTopKRouter"].startswith("softmax-topk")
