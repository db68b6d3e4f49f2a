"""moeroute.hf.patch: puts a transformers MoE model's experts on the "moeroute" backend and its
routers on moeroute.route, in place."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from . import _routers

logger = logging.getLogger("moeroute.hf")

# The child names under which transformers' MoE blocks hold their router.
_ROUTER_NAMES = ("gate", "router")


def _is_experts(module: nn.Module) -> bool:
    """An experts module that transformers' @use_experts_implementation dispatches (it sets these)."""
    return hasattr(module, "has_gate") and hasattr(module, "is_transposed") and hasattr(module, "config")


def _set_experts_implementation(model: nn.Module, name: str) -> int:
    """Sets the experts implementation on the model (and, through transformers, its sub-models),
    then on the config of any experts module still left on another (a sub-config no sub-model
    carries). Returns the number of experts modules."""
    set_implementation = getattr(model, "set_experts_implementation", None)
    if set_implementation is not None:
        set_implementation(name)
    count = 0
    for module in model.modules():
        if _is_experts(module):
            count += 1
            config: Any = module.config
            if getattr(config, "_experts_implementation", None) != name:
                config._experts_implementation = name  # (the property also sets the config's sub-configs)
    return count


def patch(model: Any, *, experts_implementation: Optional[str] = "moeroute", routers: bool = True) -> Any:
    """Runs a transformers MoE model on moeroute, in place: its experts on the "moeroute" experts
    backend, and each router of a family moeroute recognises on moeroute.route (fused scores,
    bias, group limit, top-k and weights in one call, with the family's exact semantics).

    The model's parameters, buffers and state_dict keys are unchanged (a patched router is an
    instance of its original class whose forward calls moeroute.route), so it saves, loads and
    trains like the original; `from_pretrained` of what it saves gives the original classes.
    Routers it does not recognise, or whose configuration moeroute.route cannot compute exactly
    (a DeepSeek-V3-style group limit with top_k // topk_group != 2), stay as they are; the experts
    still run on moeroute. Logs (logger "moeroute.hf", level INFO) what it replaced, per router
    class, and what it left and why.

    Args:
        model: a transformers model (`PreTrainedModel`), or any torch module holding MoE blocks.
        experts_implementation: the experts backend to set on the model and its sub-configs
            ("moeroute"; any name transformers' ExpertsInterface knows), or None to leave it.
        routers: whether to replace the recognised routers.

    Returns:
        The same model.

    Example:
        >>> import transformers, moeroute.hf
        >>> config = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> model = moeroute.hf.patch(transformers.MixtralForCausalLM(config))
        >>> type(model.model.layers[0].mlp.gate).__name__, model.config._experts_implementation
        ('MoerouteMixtralTopKRouter', 'moeroute')
    """
    experts = 0
    if experts_implementation is not None:
        experts = _set_experts_implementation(model, experts_implementation)
        logger.info("%d experts modules on the %r experts implementation", experts,
                    experts_implementation)
    if routers:
        replaced, left = replace_routers(model)
        for name, count in sorted(replaced.items()):
            logger.info("replaced %d %s with moeroute.route", count, name)
        for name, reason in sorted(left.items()):
            logger.info("left %s as it is: %s", name, reason)
    return model


def replace_routers(model: nn.Module) -> Tuple[Dict[str, int], Dict[str, str]]:
    """Replaces every recognised router in the model (see `patch`). Returns (the number replaced
    per router class, why each other router class beside an experts module was left as it is)."""
    replaced: Counter[str] = Counter()
    left: Dict[str, str] = {}
    for module in model.modules():
        if _routers.kind_of_class(type(module)) is None:
            continue
        name = type(module).__name__
        reason = _routers.replace(module)
        if reason is None:
            replaced[name] += 1
        else:
            left[name] = reason
    for module in model.modules():
        if any(_is_experts(child) for child in module.children()):
            for attribute in _ROUTER_NAMES:
                router = getattr(module, attribute, None)
                if isinstance(router, nn.Module) and _routers.kind_of_class(type(router)) is None \
                        and not isinstance(router, _routers.MoerouteRouter):
                    left[type(router).__name__] = "not a router moeroute recognises"
    return dict(replaced), left


def unpatch_routers(model: nn.Module) -> List[str]:
    """Puts every patched router back on its original forward. Returns their module names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, _routers.MoerouteRouter):
            _routers.restore(module)
            names.append(name)
    return names
