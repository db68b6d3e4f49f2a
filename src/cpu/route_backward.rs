//! Routing's backward pass: the gradient of the plan's weights w.r.t. the logits, through the
//! normalization (none / topk / kept, times scale) and the score function (softmax / sigmoid).

use crate::threads::for_each_chunk_mut;

use crate::cpu::indices::check_expert_ids;
use crate::cpu::simd::{dispatch, Body};
use crate::dtype::Accum;
use crate::error::Result;
use crate::routing::{Normalize, ScoreFunction};

const TOKENS_PER_TASK: usize = 256;

/// The plan fields route_backward reads.
pub struct WeightsGraph<'a, F> {
    pub num_tokens: usize,
    pub num_experts: usize,
    pub slots: usize,
    pub expert_ids: &'a [i32],
    pub dest: &'a [i32],
    pub probs: &'a [F],
    pub score: ScoreFunction,
    pub normalize: Normalize,
    pub scale: f64,
}

/// Writes grad_logits ([num_tokens, num_experts]) from grad_w ([num_tokens, slots]) and, when
/// given, the gradient of the plan's probs ([num_tokens, num_experts]) as well.
/// Selection is piecewise constant, so only the picked scores carry gradient. A kept slot
/// (dest >= 0) has weight scale · p[e_s] / Z, where Z is 1 for "none", the sum over all picks for
/// "topk" and over the kept picks for "kept" (Z = 0 is treated as 1, as in the forward pass).
pub fn route_backward<F: Accum>(
    g: &WeightsGraph<F>,
    grad_w: &[F],
    grad_probs: Option<&[F]>,
    grad_logits: &mut [F],
) -> Result<()> {
    let (e_count, s_count) = (g.num_experts, g.slots);
    if g.num_tokens == 0 || e_count == 0 {
        return Ok(());
    }
    assert_eq!(g.dest.len(), g.expert_ids.len(), "route_backward: dest and expert_ids differ in shape");
    check_expert_ids(g.expert_ids, s_count, e_count)?;
    let scale = F::from_f64(g.scale);
    for_each_chunk_mut(grad_logits, TOKENS_PER_TASK * e_count, |task, out| {
        dispatch(BackwardTask { g, grad_w, grad_probs, scale, first_token: task * TOKENS_PER_TASK, out });
    });
    Ok(())
}

/// One task of route_backward: a chunk of tokens and their rows of grad_logits.
struct BackwardTask<'a, F> {
    g: &'a WeightsGraph<'a, F>,
    grad_w: &'a [F],
    grad_probs: Option<&'a [F]>,
    scale: F,
    first_token: usize,
    out: &'a mut [F],
}

impl<F: Accum> Body for BackwardTask<'_, F> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let BackwardTask { g, grad_w, grad_probs, scale, first_token, out } = self;
        let (e_count, s_count) = (g.num_experts, g.slots);
        let mut grad_p = vec![F::ZERO; e_count];
        for (i, out_row) in out.chunks_exact_mut(e_count).enumerate() {
            let t = first_token + i;
            let p = &g.probs[t * e_count..(t + 1) * e_count];
            let slots = t * s_count..(t + 1) * s_count;
            let (ids, dest, gw) = (&g.expert_ids[slots.clone()], &g.dest[slots.clone()], &grad_w[slots]);
            // A slot with a row but no expert (not in a valid plan) is not kept, as in the CUDA kernel.
            let kept = |s: usize| ids[s] >= 0 && dest[s] >= 0;
            let in_denominator = |s: usize| match g.normalize {
                Normalize::None => false,
                Normalize::TopK => ids[s] >= 0,
                Normalize::Kept => kept(s),
            };
            let mut z = F::ZERO;
            for s in 0..s_count {
                if in_denominator(s) {
                    z += p[ids[s] as usize];
                }
            }
            let normalized = g.normalize != Normalize::None && z != F::ZERO;
            let z = if normalized { z } else { F::ONE };
            // d(loss)/dp: direct term g_s / Z for kept slots, minus Σ_s g_s p_s / Z² for every
            // score in the denominator.
            match grad_probs {
                Some(gp) => grad_p.copy_from_slice(&gp[t * e_count..(t + 1) * e_count]),
                None => grad_p.fill(F::ZERO),
            }
            let mut weighted = F::ZERO;
            for s in 0..s_count {
                if kept(s) {
                    grad_p[ids[s] as usize] += scale * gw[s] / z;
                    weighted += gw[s] * p[ids[s] as usize];
                }
            }
            if normalized {
                let shared = scale * weighted / (z * z);
                for s in 0..s_count {
                    if in_denominator(s) {
                        grad_p[ids[s] as usize] -= shared;
                    }
                }
            }
            match g.score {
                ScoreFunction::Sigmoid => {
                    for ((o, &gp), &pe) in out_row.iter_mut().zip(&grad_p).zip(p) {
                        *o = gp * pe * (F::ONE - pe);
                    }
                }
                ScoreFunction::Softmax => {
                    let mut dot = F::ZERO;
                    for (&gp, &pe) in grad_p.iter().zip(p) {
                        dot += gp * pe;
                    }
                    for ((o, &gp), &pe) in out_row.iter_mut().zip(&grad_p).zip(p) {
                        *o = pe * (gp - dot);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::route::route;
    use crate::routing::RouteOptions;

    /// Loss = Σ_s c_s · w_s(logits); checks the analytic gradient against central differences.
    fn check(options: RouteOptions) {
        let logits: Vec<f64> = vec![0.3, -1.2, 0.8, 0.1, 2.0, -0.4, 0.5, 0.6, -2.0, 1.1, 0.0, 0.9];
        let (t, e, k) = (3, 4, options.top_k);
        let c: Vec<f64> = (0..t * k).map(|i| 0.7 - 0.3 * i as f64).collect();
        let loss = |l: &[f64]| {
            let plan = route(l, t, e, &options).unwrap();
            plan.weights.iter().zip(&c).map(|(w, c)| w * c).sum::<f64>()
        };
        let plan = route(&logits, t, e, &options).unwrap();
        let graph = WeightsGraph {
            num_tokens: t,
            num_experts: e,
            slots: k,
            expert_ids: &plan.expert_ids,
            dest: &plan.dest,
            probs: &plan.probs,
            score: plan.score.unwrap(),
            normalize: plan.normalize,
            scale: plan.scale,
        };
        let mut grad = vec![0.0; t * e];
        route_backward(&graph, &c, None, &mut grad).unwrap();
        for i in 0..t * e {
            let (mut up, mut down) = (logits.clone(), logits.clone());
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (loss(&up) - loss(&down)) / 2e-6;
            assert!((numeric - grad[i]).abs() < 1e-6, "logit {i}: analytic {} numeric {numeric}", grad[i]);
        }
    }

    #[test]
    fn a_slot_with_a_row_but_no_expert_is_not_kept() {
        // Slot 1 has a row but no expert (not in a valid plan): "kept" normalization skips it,
        // as if its row were -1, instead of looking up expert -1.
        let grad = |dest: &[i32]| {
            let graph = WeightsGraph {
                num_tokens: 1,
                num_experts: 2,
                slots: 2,
                expert_ids: &[0, -1],
                dest,
                probs: &[0.25f64, 0.75],
                score: ScoreFunction::Softmax,
                normalize: Normalize::Kept,
                scale: 1.0,
            };
            let mut out = [0.0; 2];
            route_backward(&graph, &[1.0, 2.0], None, &mut out).unwrap();
            out
        };
        assert_eq!(grad(&[0, 1]), grad(&[0, -1]));
    }

    #[test]
    fn matches_finite_differences() {
        use crate::routing::options::CapacityRequest;
        for score in [ScoreFunction::Softmax, ScoreFunction::Sigmoid] {
            for normalize in [Normalize::None, Normalize::TopK, Normalize::Kept] {
                let mut options = RouteOptions::new(2);
                options.score = score;
                options.normalize = normalize;
                options.scale = 1.5;
                options.capacity = CapacityRequest { capacity: Some(1), ..Default::default() };
                check(options);
            }
        }
    }
}
