//! Top-k selection with the lower-index tie rule, and group-limited masking of selection scores.

use std::cmp::Ordering;

use crate::dtype::Accum;
use crate::routing::GroupLimit;

/// Orders (value, index) pairs best first: higher value, then lower index. Never panics.
#[inline(always)]
fn rank<F: Accum>(a: (F, usize), b: (F, usize)) -> Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1))
}

/// Writes the indices of the `ids.len()` highest `values` into `ids`, best first (ties → lower
/// index). `scratch` is reused between calls. `values` must hold at least `ids.len()` entries
/// greater than -inf (true for scores, and checked for group-limited routing by the options).
#[inline(always)]
pub fn top_k<F: Accum>(values: &[F], ids: &mut [i32], scratch: &mut Vec<F>, order: &mut Vec<usize>) {
    let k = ids.len();
    if k == 2 {
        top_2(values, ids);
    } else if k <= 8 {
        top_k_by_argmax(values, ids, scratch);
    } else {
        order.clear();
        order.extend(0..values.len());
        let by_rank = |&a: &usize, &b: &usize| rank((values[a], a), (values[b], b));
        if k < values.len() {
            order.select_nth_unstable_by(k, by_rank);
        }
        order[..k].sort_unstable_by(by_rank);
        for (id, &e) in ids.iter_mut().zip(order.iter()) {
            *id = e as i32;
        }
    }
}

/// Small k: k branch-free passes, each a vectorized max then the first index holding it; the
/// winner is set to -inf in a scratch copy before the next pass. The first index wins ties.
#[inline(always)]
fn top_k_by_argmax<F: Accum>(values: &[F], ids: &mut [i32], scratch: &mut Vec<F>) {
    scratch.clear();
    scratch.extend_from_slice(values);
    for id in ids.iter_mut() {
        let max = lane_max(scratch);
        let e = first_equal(scratch, max);
        *id = e as i32;
        scratch[e] = F::NEG_INFINITY;
    }
}

const LANES: usize = 8;

#[allow(clippy::needless_range_loop)] // lane-indexed loops are what vectorizes
/// k = 2 in one branch-free pass: each lane keeps its two largest values; the best two values
/// overall come from those 2 * LANES candidates, then their first indices are looked up.
#[inline(always)]
fn top_2<F: Accum>(values: &[F], ids: &mut [i32]) {
    let mut first = [F::NEG_INFINITY; LANES];
    let mut second = [F::NEG_INFINITY; LANES];
    let (blocks, tail) = values.as_chunks::<LANES>();
    for block in blocks {
        for l in 0..LANES {
            let (v, top) = (block[l], first[l]);
            let smaller = if v > top { top } else { v };
            first[l] = if v > top { v } else { top };
            second[l] = if smaller > second[l] { smaller } else { second[l] };
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        let top = first[l];
        let smaller = if v > top { top } else { v };
        first[l] = if v > top { v } else { top };
        second[l] = if smaller > second[l] { smaller } else { second[l] };
    }
    let best = lane_max(&first);
    let best_lane = first.iter().position(|&v| v == best).unwrap_or(0);
    first[best_lane] = second[best_lane];
    let runner_up = lane_max(&first).max_of(lane_max(&second));
    let best_id = first_equal(values, best);
    let runner_up_id = if runner_up == best {
        best_id + 1 + first_equal(&values[best_id + 1..], best)
    } else {
        first_equal(values, runner_up)
    };
    ids[0] = best_id as i32;
    ids[1] = runner_up_id as i32;
}

/// The maximum over LANES interleaved partial maxima (no NaN in `values`).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn lane_max<F: Accum>(values: &[F]) -> F {
    let mut lanes = [F::NEG_INFINITY; LANES];
    let (blocks, tail) = values.as_chunks::<LANES>();
    for block in blocks {
        for l in 0..LANES {
            lanes[l] = if block[l] > lanes[l] { block[l] } else { lanes[l] };
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        lanes[l] = if v > lanes[l] { v } else { lanes[l] };
    }
    let mut m = F::NEG_INFINITY;
    for v in lanes {
        m = if v > m { v } else { m };
    }
    m
}

/// The first index holding `target`, found block by block with a vectorized compare.
#[inline(always)]
fn first_equal<F: Accum>(values: &[F], target: F) -> usize {
    const BLOCK: usize = 8;
    let mut chunks = values.chunks_exact(BLOCK);
    for (b, chunk) in (&mut chunks).enumerate() {
        if chunk.iter().fold(false, |any, &v| any | (v == target)) {
            return b * BLOCK + chunk.iter().position(|&v| v == target).unwrap_or(0);
        }
    }
    let start = values.len() - chunks.remainder().len();
    start + chunks.remainder().iter().position(|&v| v == target).unwrap_or(0)
}

/// Group-limited routing: keeps the `topk_groups` groups with the largest sum of their top
/// `per_group` values (ties → lower group) and sets every other value to -inf.
pub fn mask_groups<F: Accum>(
    values: &mut [F],
    limit: GroupLimit,
    per_group: usize,
    group_scores: &mut Vec<F>,
    scratch: &mut Vec<F>,
    order: &mut Vec<usize>,
) {
    let group_size = values.len() / limit.num_groups;
    group_scores.clear();
    let mut picked = vec![0i32; per_group];
    for g in 0..limit.num_groups {
        let members = &values[g * group_size..(g + 1) * group_size];
        top_k(members, &mut picked, scratch, order);
        let mut sum = F::ZERO;
        for &i in &picked {
            sum += members[i as usize];
        }
        group_scores.push(sum);
    }
    let mut kept_groups = vec![0i32; limit.topk_groups];
    top_k(group_scores, &mut kept_groups, scratch, order);
    let mut keep = vec![false; limit.num_groups];
    kept_groups.iter().for_each(|&g| keep[g as usize] = true);
    for (g, chunk) in values.chunks_mut(group_size).enumerate() {
        if !keep[g] {
            chunk.iter_mut().for_each(|v| *v = F::NEG_INFINITY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_top_k(values: &[f32], k: usize) -> Vec<i32> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].partial_cmp(&values[a]).unwrap().then(a.cmp(&b)));
        order[..k].iter().map(|&e| e as i32).collect()
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let mut ids = [0i32; 2];
        top_k(&[1.0f32, 2.0, 2.0, 2.0], &mut ids, &mut Vec::new(), &mut Vec::new());
        assert_eq!(ids, [1, 2]);
        let mut ids = [0i32; 9];
        top_k(&[0.5f32; 12], &mut ids, &mut Vec::new(), &mut Vec::new());
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn groups_mask_all_but_the_best() {
        // groups: [0,1] sum-of-top1 = 0.9, [2,3] = 0.5, [4,5] = 0.9 → keep groups 0 and 2 (tie → lower).
        let mut v = vec![0.9f32, 0.1, 0.5, 0.4, 0.2, 0.9];
        mask_groups(&mut v, GroupLimit { num_groups: 3, topk_groups: 2 }, 1, &mut Vec::new(), &mut Vec::new(), &mut Vec::new());
        assert_eq!(v[2], f32::NEG_INFINITY);
        assert_eq!(v[3], f32::NEG_INFINITY);
        assert_eq!(v[5], 0.9);
    }

    proptest! {
        #[test]
        fn matches_a_full_sort(values in prop::collection::vec(0u8..4, 1..40), k_seed in 0usize..100) {
            let values: Vec<f32> = values.into_iter().map(f32::from).collect();
            let k = 1 + k_seed % values.len();
            let mut ids = vec![0i32; k];
            top_k(&values, &mut ids, &mut Vec::new(), &mut Vec::new());
            prop_assert_eq!(ids, naive_top_k(&values, k));
        }
    }
}
