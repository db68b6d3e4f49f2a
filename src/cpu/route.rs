//! Token-choice routing on the CPU: gating, pre-capacity weights, plan construction, final weights.

use rayon::prelude::*;

use crate::threads::min_len;

use crate::cpu::gating::{gate, GateSpec};
use crate::cpu::scores::ScoreMath;
use crate::cpu::token_plan::{build_token_plan, zero_dropped};
use crate::dtype::{Accum, Activation};
use crate::error::Result;
use crate::routing::{route_layout, Normalize, RouteOptions, RoutingPlan};

/// Routes `logits` ([num_tokens, num_experts], row-major) to `options.top_k` experts per token.
pub fn route<L: Activation>(
    logits: &[L],
    num_tokens: usize,
    num_experts: usize,
    options: &RouteOptions,
) -> Result<RoutingPlan<L::Acc>>
where
    L::Acc: ScoreMath,
{
    let (layout, rows) = route_layout(options, num_tokens, num_experts)?;
    let k = options.top_k;
    let bias: Option<Vec<L::Acc>> =
        options.bias.as_ref().map(|b| b.iter().map(|&v| <L::Acc as Accum>::from_f64(v)).collect());
    let spec = GateSpec { top_k: k, score: options.score, bias: bias.as_deref(), groups: options.groups };
    let gated = gate(logits, num_tokens, num_experts, &spec)?;

    // Weights before capacity (and before scale): they are also the "score" priority keys.
    let mut weights = gated.picked_scores.clone();
    if options.normalize == Normalize::TopK {
        normalize_rows(&mut weights, k);
    }
    let plan = build_token_plan(&gated.expert_ids, &weights, num_tokens, k, num_experts, layout, options.priority)?;
    debug_assert_eq!(plan.src.len(), rows);

    if options.normalize == Normalize::Kept {
        weights.copy_from_slice(&gated.picked_scores);
    }
    let scale = <L::Acc as Accum>::from_f64(options.scale);
    zero_dropped(&mut weights, &plan.dest);
    if options.normalize == Normalize::Kept {
        normalize_rows(&mut weights, k);
    }
    if options.scale != 1.0 {
        weights.par_iter_mut().with_min_len(min_len()).for_each(|w| *w = *w * scale);
    }
    Ok(RoutingPlan {
        num_tokens,
        num_experts,
        slots: k,
        num_rows: rows,
        expert_ids: gated.expert_ids,
        weights,
        probs: gated.probs,
        dest: plan.dest,
        src: plan.src,
        expert_offsets: plan.expert_offsets,
        tokens_per_expert: plan.tokens_per_expert,
        assigned_per_expert: plan.assigned_per_expert,
        capacity: layout.capacity(),
        score: Some(options.score),
        normalize: options.normalize,
        scale: options.scale,
    })
}

/// Divides each row of `values` ([_, k]) by its sum (in slot order); a zero sum leaves the row
/// as it is.
fn normalize_rows<F: Accum>(values: &mut [F], k: usize) {
    values.par_chunks_mut(k * 1024).with_min_len(min_len()).for_each(|chunk| {
        for row in chunk.chunks_mut(k) {
            let mut sum = F::ZERO;
            for &v in row.iter() {
                sum += v;
            }
            if sum != F::ZERO {
                row.iter_mut().for_each(|v| *v = *v / sum);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::options::CapacityRequest;

    #[test]
    fn top2_softmax_with_capacity() {
        let logits = [2.0f32, 1.0, 0.0, 3.0, 0.0, 1.0];
        let mut options = RouteOptions::new(2);
        options.capacity = CapacityRequest { capacity: Some(1), ..Default::default() };
        let plan = route(&logits, 2, 3, &options).unwrap();
        assert_eq!(plan.expert_ids, vec![0, 1, 0, 2]);
        // slot priority: slot 0 of both tokens goes to expert 0; token 0 wins.
        assert_eq!(plan.dest, vec![0, 1, -1, 2]);
        assert_eq!(plan.src, vec![0, 0, 1]);
        assert_eq!(plan.num_dropped(), 1);
        assert_eq!(plan.weights[2], 0.0);
        let w0 = plan.weights[0] + plan.weights[1];
        assert!((w0 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn empty_input_gives_empty_plan() {
        let plan = route::<f32>(&[], 0, 4, &RouteOptions::new(2)).unwrap();
        assert!(plan.src.is_empty() && plan.dest.is_empty());
        assert_eq!(plan.expert_offsets, vec![0; 5]);
    }
}
