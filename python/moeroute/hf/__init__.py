"""moeroute for Hugging Face transformers (`pip install "moeroute[hf]"`): importing this module
registers the "moeroute" experts backend, so that

    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="moeroute")

(or `model.set_experts_implementation("moeroute")`) runs every MoE family whose experts use
transformers' `@use_experts_implementation` on moeroute's permute / combine kernels; `patch(model)`
also puts the routers of the families it knows on moeroute.route."""

from ._experts import NAME, moeroute_experts_forward, register
from ._patch import patch

register()

__all__ = ["NAME", "patch", "moeroute_experts_forward"]
