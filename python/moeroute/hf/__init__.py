"""moeroute for Hugging Face transformers (`pip install "moeroute[hf]"`): importing this module
registers the "moeroute" experts backend, so that

    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="moeroute")

(or `model.set_experts_implementation("moeroute")`) runs every MoE family whose experts use
transformers' `@use_experts_implementation` on moeroute's permute / combine kernels; `patch(model)`
also puts the routers of the families it knows on moeroute.route."""

from typing import Dict

from ._experts import NAME, moeroute_experts_forward, register
from ._patch import patch
from ._routers import ROUTERS

register()


def supported_routers() -> Dict[str, str]:
    """The router classes `patch` replaces, "module.Class" -> how moeroute.route computes them."""
    return {f"{module}.{name}": f"{kind.name}: {kind.route_options}" for (module, name), kind in ROUTERS.items()}


__all__ = ["NAME", "patch", "moeroute_experts_forward", "supported_routers"]
