"""Tiny transformers MoE models for tests/test_hf.py: one config per family (random weights, no downloads)."""

import torch
import transformers

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

# family -> (config class, its MoE options). Each has >= 6 experts and top-k >= 2; the aux loss coefficient
# is set where the family computes one (output_router_logits=True adds it to the loss).
FAMILIES = {
    "mixtral": ("MixtralConfig", dict(intermediate_size=48, num_local_experts=6, num_experts_per_tok=2,
                                      router_aux_loss_coef=0.02)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=48, moe_intermediate_size=24, num_experts=8,
                                         num_experts_per_tok=3, norm_topk_prob=False,
                                         shared_expert_intermediate_size=40, router_aux_loss_coef=0.02)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=48, moe_intermediate_size=24, num_experts=8,
                                         num_experts_per_tok=2, norm_topk_prob=True, head_dim=8,
                                         router_aux_loss_coef=0.02)),
    "olmoe": ("OlmoeConfig", dict(intermediate_size=24, num_experts=8, num_experts_per_tok=3,
                                  norm_topk_prob=False, router_aux_loss_coef=0.02)),
    # 8 experts in 4 groups, 2 kept, top-4: moeroute scores a group by its max(1, 4 // 2) = 2 best keys,
    # as DeepSeek-V3 does; a random e_score_correction_bias (set by the test) steers the selection.
    "deepseek_v3": ("DeepseekV3Config", dict(intermediate_size=48, moe_intermediate_size=24, n_routed_experts=8,
                                             num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                                             first_k_dense_replace=1, routed_scaling_factor=2.5,
                                             kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                                             qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
                                             num_key_value_heads=4)),
    "gpt_oss": ("GptOssConfig", dict(intermediate_size=24, num_local_experts=8, num_experts_per_tok=2, head_dim=8,
                                     sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                     router_aux_loss_coef=0.02)),
    "glm4_moe": ("Glm4MoeConfig", dict(intermediate_size=48, moe_intermediate_size=24, n_routed_experts=8,
                                       num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=1,
                                       first_k_dense_replace=0, routed_scaling_factor=1.5, norm_topk_prob=True,
                                       head_dim=8)),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(intermediate_size=48, moe_intermediate_size=24, moe_num_experts=8,
                                                moe_k=2, moe_num_shared_experts=1, moe_layer_start_index=0,
                                                moe_layer_end_index=1, router_aux_loss_coef=0.02)),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", dict(intermediate_size=24, num_experts=8, moe_topk=2, head_dim=8)),
    "granitemoe": ("GraniteMoeConfig", dict(intermediate_size=24, num_local_experts=8, num_experts_per_tok=2,
                                            router_aux_loss_coef=0.02)),
}

# The families whose causal-LM loss adds a router auxiliary loss with output_router_logits=True.
AUX_LOSS = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "ernie4_5_moe", "granitemoe"}


def config(family, **overrides):
    """The family's tiny config (float32, eager attention)."""
    name, options = FAMILIES[family]
    kwargs = {**COMMON, **options, **overrides}
    cfg = getattr(transformers, name)(**kwargs)
    cfg._attn_implementation = "eager"
    return cfg


def build(family, seed=0, **overrides):
    """A tiny causal LM of the family with random weights (router weights and any selection bias
    drawn wide enough that routing is decided by clear margins), in eval mode."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(family, **overrides))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if tensor.dim() >= 2 and tensor.numel() and not name.endswith("gate.weight"):
                tensor.normal_(0.0, 0.2, generator=generator)
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith(("gate.weight", "router.weight", "gate.wg.weight")):
                tensor.normal_(0.0, 0.5, generator=generator)
            elif name.endswith("e_score_correction_bias") or name.endswith("router.bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.eval()


def batch(seed=0, batch_size=2, length=10):
    """(input_ids, attention_mask) with one left-padded row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0
    input_ids[0, :2] = 0
    return input_ids, attention_mask
