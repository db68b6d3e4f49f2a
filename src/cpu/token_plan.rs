//! Plan construction for token choice: per-expert counts, capacity with the three priorities,
//! offsets, and each kept pick's row (ascending token order inside every expert's segment).

use rayon::prelude::*;

use crate::threads::min_len;

use crate::dtype::Accum;
use crate::error::Result;
use crate::routing::capacity::{num_rows, Layout};
use crate::routing::Priority;

/// Tokens per parallel task; fixed so results do not depend on the thread count.
const TOKENS_PER_TASK: usize = 2048;

/// The index arrays of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanIndices {
    pub dest: Vec<i32>,
    pub src: Vec<i32>,
    pub expert_offsets: Vec<i64>,
    pub tokens_per_expert: Vec<i64>,
    pub assigned_per_expert: Vec<i64>,
}

/// Builds dest/src/offsets/counts for `expert_ids` ([T, k]: each entry an expert in [0, E), or -1
/// for an unused slot, which gets no row and is not counted). A token may pick an expert more than
/// once (given picks); its rows then follow slot order. `priority_keys` ([T, k]) rank picks for
/// `Priority::Score`.
pub fn build_token_plan<F: Accum>(
    expert_ids: &[i32],
    priority_keys: &[F],
    num_tokens: usize,
    top_k: usize,
    num_experts: usize,
    layout: Layout,
    priority: Priority,
) -> Result<PlanIndices> {
    let rows = num_rows(layout, num_tokens, top_k, num_experts)?;
    let assigned = count_per_expert(expert_ids, num_experts, top_k, |_| true);
    // kept[i]: whether pick i fits its expert's capacity.
    let kept: Option<Vec<bool>> = match layout {
        Layout::Capacity(c) if assigned.iter().any(|&n| n > c as i64) => {
            Some(keep_within_capacity(expert_ids, priority_keys, num_experts, top_k, c, priority))
        }
        _ => None,
    };
    let is_kept = |i: usize| kept.as_ref().is_none_or(|k| k[i]);
    let tokens_per_expert = match &kept {
        None => assigned.clone(),
        Some(_) => count_per_expert(expert_ids, num_experts, top_k, is_kept),
    };
    let expert_offsets = segment_offsets(&tokens_per_expert, layout);
    let dest = assign_rows(expert_ids, &expert_offsets, num_experts, top_k, is_kept);
    let mut src = vec![-1i32; rows];
    for (i, &d) in dest.iter().enumerate() {
        if d >= 0 {
            src[d as usize] = (i / top_k) as i32;
        }
    }
    Ok(PlanIndices { dest, src, expert_offsets, tokens_per_expert, assigned_per_expert: assigned })
}

/// Sets the weight of every pick without a row (dropped, or an unused slot: dest < 0) to 0.
pub fn zero_dropped<F: Accum>(weights: &mut [F], dest: &[i32]) {
    weights.par_iter_mut().with_min_len(min_len()).zip(dest).for_each(|(w, &d)| {
        if d < 0 {
            *w = F::ZERO;
        }
    });
}

/// Picks per expert among those with `include(pick index)`, for each task's chunk of tokens.
fn counts_per_task(
    expert_ids: &[i32],
    num_experts: usize,
    top_k: usize,
    include: impl Fn(usize) -> bool + Sync,
) -> Vec<Vec<i64>> {
    let chunk = (TOKENS_PER_TASK * top_k).max(1);
    expert_ids
        .par_chunks(chunk).with_min_len(min_len())
        .enumerate()
        .map(|(task, ids)| {
            let mut counts = vec![0i64; num_experts];
            for (j, &e) in ids.iter().enumerate() {
                if e >= 0 && include(task * chunk + j) {
                    counts[e as usize] += 1;
                }
            }
            counts
        })
        .collect()
}

/// Picks per expert among those with `include(pick index)`.
fn count_per_expert(
    expert_ids: &[i32],
    num_experts: usize,
    top_k: usize,
    include: impl Fn(usize) -> bool + Sync,
) -> Vec<i64> {
    let mut total = vec![0i64; num_experts];
    for counts in counts_per_task(expert_ids, num_experts, top_k, include) {
        total.iter_mut().zip(&counts).for_each(|(t, c)| *t += c);
    }
    total
}

/// Which picks an expert of capacity `c` keeps, by priority.
fn keep_within_capacity<F: Accum>(
    expert_ids: &[i32],
    priority_keys: &[F],
    num_experts: usize,
    top_k: usize,
    c: usize,
    priority: Priority,
) -> Vec<bool> {
    let picks = expert_ids.len();
    let mut kept = vec![false; picks];
    let mut seen = vec![0usize; num_experts];
    let mut take = |i: usize| {
        let Ok(e) = usize::try_from(expert_ids[i]) else { return }; // an unused slot
        kept[i] = seen[e] < c;
        seen[e] += 1;
    };
    match priority {
        Priority::Token => (0..picks).for_each(take),
        Priority::Slot => {
            for s in 0..top_k {
                (s..picks).step_by(top_k).for_each(&mut take);
            }
        }
        Priority::Score => {
            // Bucket picks by expert in (token, slot) order, then a stable sort by descending key
            // keeps (token, slot) order among equal keys.
            let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); num_experts];
            for (i, &e) in expert_ids.iter().enumerate() {
                if let Ok(e) = usize::try_from(e) {
                    buckets[e].push(i);
                }
            }
            buckets.par_iter_mut().with_min_len(min_len()).filter(|b| b.len() > c).for_each(|bucket| {
                bucket.sort_by(|&a, &b| {
                    priority_keys[b].partial_cmp(&priority_keys[a]).unwrap_or(std::cmp::Ordering::Equal)
                });
                bucket.truncate(c);
            });
            for bucket in &buckets {
                bucket.iter().for_each(|&i| kept[i] = true);
            }
        }
    }
    kept
}

/// Segment starts: `e * C` in capacity layout, prefix sums of counts rounded up to `pad_to`
/// in dropless layout.
fn segment_offsets(tokens_per_expert: &[i64], layout: Layout) -> Vec<i64> {
    let mut offsets = Vec::with_capacity(tokens_per_expert.len() + 1);
    offsets.push(0i64);
    let mut end = 0i64;
    for &n in tokens_per_expert {
        end += match layout {
            Layout::Capacity(c) => c as i64,
            Layout::Dropless { pad_to } => (n as u64).div_ceil(pad_to as u64) as i64 * pad_to as i64,
        };
        offsets.push(end);
    }
    offsets
}

/// Gives each kept pick the next row of its expert's segment, in (token, slot) order; -1 otherwise.
fn assign_rows(
    expert_ids: &[i32],
    expert_offsets: &[i64],
    num_experts: usize,
    top_k: usize,
    is_kept: impl Fn(usize) -> bool + Sync,
) -> Vec<i32> {
    let chunk = (TOKENS_PER_TASK * top_k).max(1);
    // Kept picks per expert in each task, then each task's first row per expert.
    let per_task = counts_per_task(expert_ids, num_experts, top_k, &is_kept);
    let mut next_row = expert_offsets[..num_experts].to_vec();
    let starts: Vec<Vec<i64>> = per_task
        .iter()
        .map(|counts| {
            let start = next_row.clone();
            next_row.iter_mut().zip(counts).for_each(|(r, n)| *r += n);
            start
        })
        .collect();
    let mut dest = vec![-1i32; expert_ids.len()];
    dest.par_chunks_mut(chunk).with_min_len(min_len()).zip(expert_ids.par_chunks(chunk)).zip(starts).enumerate().for_each(
        |(task, ((dest, ids), mut row))| {
            for (j, (d, &e)) in dest.iter_mut().zip(ids).enumerate() {
                if e >= 0 && is_kept(task * chunk + j) {
                    *d = row[e as usize] as i32;
                    row[e as usize] += 1;
                }
            }
        },
    );
    dest
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Distinct experts per token from a seed list: a rotation of 0..e, walked up or down.
    fn ids_from(seeds: &[u8], t: usize, k: usize, e: usize) -> Vec<i32> {
        (0..t)
            .flat_map(|tok| {
                let seed = seeds[tok % seeds.len()] as usize;
                let step = if seed.is_multiple_of(2) { 1 } else { e - 1 };
                (0..k).map(move |j| ((seed + j * step) % e) as i32)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn plan_invariants(seeds in prop::collection::vec(any::<u8>(), 1..64), t in 0usize..40,
                           e in 1usize..6, k_seed in 0usize..6, cap in 0usize..12, pad in 1usize..4,
                           dropless in any::<bool>(), p in 0usize..3) {
            let k = 1 + k_seed % e;
            let ids = ids_from(&seeds, t, k, e);
            let keys: Vec<f32> = (0..t * k).map(|i| seeds[i % seeds.len()] as f32).collect();
            let layout = if dropless { Layout::Dropless { pad_to: pad } } else { Layout::Capacity(cap) };
            let priority = [Priority::Slot, Priority::Token, Priority::Score][p];
            let plan = build_token_plan(&ids, &keys, t, k, e, layout, priority).unwrap();
            // Rows are unique, inside their expert's segment, packed first, in ascending token order.
            let mut seen = vec![false; plan.src.len()];
            for (i, &d) in plan.dest.iter().enumerate() {
                if d < 0 { prop_assert!(!dropless); continue; }
                let (ex, row) = (ids[i] as usize, d as usize);
                prop_assert!(!seen[row]);
                seen[row] = true;
                prop_assert_eq!(plan.src[row], (i / k) as i32);
                prop_assert!(plan.expert_offsets[ex] <= d as i64 && (d as i64) < plan.expert_offsets[ex + 1]);
            }
            for ex in 0..e {
                let lo = plan.expert_offsets[ex] as usize;
                let n = plan.tokens_per_expert[ex] as usize;
                let tokens = &plan.src[lo..lo + n];
                prop_assert!(tokens.windows(2).all(|w| w[0] < w[1]));
                if let Layout::Capacity(c) = layout {
                    prop_assert_eq!(n as i64, plan.assigned_per_expert[ex].min(c as i64));
                }
            }
            prop_assert_eq!(plan.assigned_per_expert.iter().sum::<i64>(), (t * k) as i64);
        }
    }

    fn plan(ids: &[i32], keys: &[f32], t: usize, k: usize, e: usize, layout: Layout, p: Priority) -> PlanIndices {
        build_token_plan(ids, keys, t, k, e, layout, p).unwrap()
    }

    #[test]
    fn dropless_segments_in_token_order() {
        // tokens: 0 -> (1, 0), 1 -> (0, 1), 2 -> (1, 0)
        let ids = [1, 0, 0, 1, 1, 0];
        let p = plan(&ids, &[0.0; 6], 3, 2, 2, Layout::Dropless { pad_to: 1 }, Priority::Slot);
        assert_eq!(p.expert_offsets, vec![0, 3, 6]);
        assert_eq!(p.src, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(p.dest, vec![3, 0, 1, 4, 5, 2]);
        let padded = plan(&ids, &[0.0; 6], 3, 2, 2, Layout::Dropless { pad_to: 4 }, Priority::Slot);
        assert_eq!(padded.expert_offsets, vec![0, 4, 8]);
        assert_eq!(padded.src.len(), 6 + 2 * 3);
        assert_eq!(padded.src[3], -1);
    }

    #[test]
    fn priorities_choose_different_picks() {
        // Expert 0 gets token 0 slot 1, token 1 slot 0, token 2 slot 1; capacity 1.
        let ids = [1, 0, 0, 1, 1, 0];
        let keys = [0.6f32, 0.4, 0.3, 0.2, 0.5, 0.45];
        let slot = plan(&ids, &keys, 3, 2, 2, Layout::Capacity(1), Priority::Slot);
        assert_eq!(slot.dest, vec![1, -1, 0, -1, -1, -1]);
        let token = plan(&ids, &keys, 3, 2, 2, Layout::Capacity(1), Priority::Token);
        assert_eq!(token.dest, vec![1, 0, -1, -1, -1, -1]);
        let score = plan(&ids, &keys, 3, 2, 2, Layout::Capacity(1), Priority::Score);
        assert_eq!(score.dest, vec![1, -1, -1, -1, -1, 0]);
        assert_eq!(score.tokens_per_expert, vec![1, 1]);
        assert_eq!(score.assigned_per_expert, vec![3, 3]);
        assert_eq!(score.src, vec![2, 0]);
    }
}
