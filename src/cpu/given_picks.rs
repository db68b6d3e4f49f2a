//! Plans from picks made elsewhere (a model's own router): the given experts and weights, laid out
//! by the same capacity, priority and row rules as `route`.

use rayon::prelude::*;

use crate::cpu::token_plan::{build_token_plan, zero_dropped};
use crate::dtype::{Accum, Activation};
use crate::error::Result;
use crate::routing::capacity::picks_layout;
use crate::routing::options::PicksOptions;
use crate::routing::{Normalize, RoutingPlan};
use crate::threads::min_len;

/// The plan of `expert_ids` / `weights` ([num_tokens, top_k] each, row-major). An id outside
/// [0, num_experts) (e.g. -1, or an expert-parallel sentinel >= num_experts) is an unused slot:
/// expert_ids -1, no row, weight 0. A kept pick's weight is its given weight (in the accumulation
/// dtype), a dropped one's 0; `probs[t, e]` is the sum of token t's given weights for expert e
/// (before capacity), 0 for experts it did not pick. `Priority::Score` ranks by the given weights.
pub fn plan_from_picks<W: Activation>(
    expert_ids: &[i64],
    weights: &[W],
    num_tokens: usize,
    top_k: usize,
    num_experts: usize,
    options: &PicksOptions,
) -> Result<RoutingPlan<W::Acc>> {
    let (layout, rows) = picks_layout(&options.capacity, options.pad_to, num_tokens, top_k, num_experts)?;
    debug_assert!(expert_ids.len() == num_tokens * top_k && weights.len() == num_tokens * top_k);
    let zero = <W::Acc as Accum>::ZERO;
    let (ids, mut given): (Vec<i32>, Vec<W::Acc>) = expert_ids
        .par_iter()
        .with_min_len(min_len())
        .zip(weights)
        .map(|(&e, &w)| if (0..num_experts as i64).contains(&e) { (e as i32, w.to_acc()) } else { (-1, zero) })
        .unzip();
    let plan = build_token_plan(&ids, &given, num_tokens, top_k, num_experts, layout, options.priority)?;
    debug_assert_eq!(plan.src.len(), rows);

    let mut probs = vec![zero; num_tokens * num_experts];
    if top_k > 0 && num_experts > 0 {
        probs.par_chunks_mut(num_experts).with_min_len(min_len()).zip(ids.par_chunks(top_k).zip(given.par_chunks(top_k))).for_each(
            |(row, (ids, given))| {
                for (&e, &w) in ids.iter().zip(given) {
                    if e >= 0 {
                        row[e as usize] += w;
                    }
                }
            },
        );
    }
    zero_dropped(&mut given, &plan.dest);
    Ok(RoutingPlan {
        num_tokens,
        num_experts,
        slots: top_k,
        num_rows: rows,
        expert_ids: ids,
        weights: given,
        probs,
        dest: plan.dest,
        src: plan.src,
        expert_offsets: plan.expert_offsets,
        tokens_per_expert: plan.tokens_per_expert,
        assigned_per_expert: plan.assigned_per_expert,
        capacity: layout.capacity(),
        score: None,
        normalize: Normalize::None,
        scale: 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::options::CapacityRequest;
    use crate::routing::Priority;

    fn options(capacity: Option<usize>, priority: Priority, pad_to: usize) -> PicksOptions {
        PicksOptions { capacity: CapacityRequest { capacity, ..Default::default() }, priority, pad_to }
    }

    #[test]
    fn out_of_range_ids_are_unused_slots() {
        // token 0 -> (1, sentinel 3), token 1 -> (-1, 0), token 2 -> (1, 0); 3 experts
        let ids = [1i64, 3, -1, 0, 1, 0];
        let w = [0.5f32, 0.25, 0.75, 0.125, 1.0, 2.0];
        let plan = plan_from_picks(&ids, &w, 3, 2, 3, &options(None, Priority::Slot, 1)).unwrap();
        assert_eq!(plan.expert_ids, vec![1, -1, -1, 0, 1, 0]);
        assert_eq!(plan.dest, vec![2, -1, -1, 0, 3, 1]);
        assert_eq!(plan.src, vec![1, 2, 0, 2, -1, -1]);
        assert_eq!(plan.expert_offsets, vec![0, 2, 4, 4]);
        assert_eq!(plan.weights, vec![0.5, 0.0, 0.0, 0.125, 1.0, 2.0]);
        assert_eq!(plan.probs, vec![0.0, 0.5, 0.0, 0.125, 0.0, 0.0, 2.0, 1.0, 0.0]);
        assert_eq!(plan.assigned_per_expert, vec![2, 2, 0]);
        assert_eq!(plan.score, None);
    }

    #[test]
    fn capacity_drops_by_priority_and_zeroes_weights() {
        // Expert 0 picked by (t0, s1), (t1, s0), (t2, s1); capacity 1.
        let ids = [1i64, 0, 0, 1, 1, 0];
        let w = [0.6f32, 0.4, 0.3, 0.2, 0.5, 0.45];
        let score = plan_from_picks(&ids, &w, 3, 2, 2, &options(Some(1), Priority::Score, 1)).unwrap();
        assert_eq!(score.dest, vec![1, -1, -1, -1, -1, 0]);
        assert_eq!(score.weights, vec![0.6, 0.0, 0.0, 0.0, 0.0, 0.45]);
        assert_eq!(score.capacity, Some(1));
    }

    #[test]
    fn repeated_experts_take_rows_in_slot_order() {
        let ids = [2i64, 2, 0, 2];
        let w = [1.0f64, 2.0, 3.0, 4.0];
        let plan = plan_from_picks(&ids, &w, 2, 2, 3, &options(None, Priority::Slot, 1)).unwrap();
        assert_eq!(plan.dest, vec![1, 2, 0, 3]);
        assert_eq!(plan.src, vec![1, 0, 0, 1]);
        assert_eq!(plan.probs, vec![0.0, 0.0, 3.0, 3.0, 0.0, 4.0]);
    }

    #[test]
    fn more_picks_than_experts_and_empty_inputs() {
        let plan = plan_from_picks(&[0i64, 0, 0], &[1.0f32; 3], 1, 3, 1, &options(None, Priority::Slot, 4)).unwrap();
        assert_eq!(plan.expert_offsets, vec![0, 4]);
        // R = T * k + E * (pad_to - 1) = 6: expert 0's padded segment, then 2 rows no expert owns.
        assert_eq!(plan.src, vec![0, 0, 0, -1, -1, -1]);
        let empty = plan_from_picks::<f32>(&[], &[], 0, 2, 4, &options(None, Priority::Slot, 1)).unwrap();
        assert!(empty.src.is_empty() && empty.expert_offsets == vec![0; 5]);
        assert!(plan_from_picks::<f32>(&[], &[], 0, 2, 0, &options(None, Priority::Slot, 1)).is_err());
        assert!(plan_from_picks::<f32>(&[], &[], 0, 2, 4, &options(None, Priority::Slot, 0)).is_err());
    }
}
