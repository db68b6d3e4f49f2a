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
/// index). `order` is scratch space of at least `values.len()` entries for large k.
#[inline(always)]
pub fn top_k<F: Accum>(values: &[F], ids: &mut [i32], order: &mut Vec<usize>) {
    let k = ids.len();
    if k <= 8 {
        top_k_insertion(values, ids);
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

/// Small k: seed a best-first list with the first k values, then one pass where a value enters
/// only if it is strictly greater than the current k-th best — so equal values never displace an
/// earlier (lower) index, and the common case is a single predictable compare.
#[inline(always)]
fn top_k_insertion<F: Accum>(values: &[F], ids: &mut [i32]) {
    let k = ids.len();
    let mut best = [(F::NEG_INFINITY, 0usize); 8];
    let insert = |best: &mut [(F, usize); 8], last: usize, v: F, e: usize| {
        let mut j = last;
        while j > 0 && v > best[j - 1].0 {
            best[j] = best[j - 1];
            j -= 1;
        }
        best[j] = (v, e);
    };
    for (e, &v) in values[..k].iter().enumerate() {
        insert(&mut best, e, v, e);
    }
    let mut threshold = best[k - 1].0;
    let offer = |best: &mut [(F, usize); 8], threshold: &mut F, v: F, e: usize| {
        if v > *threshold {
            insert(best, k - 1, v, e);
            *threshold = best[k - 1].0;
        }
    };
    // Blocks of 8 with nothing above the threshold (one vectorized compare) are skipped.
    const BLOCK: usize = 8;
    let rest = &values[k..];
    let mut blocks = rest.chunks_exact(BLOCK);
    for (b, block) in (&mut blocks).enumerate() {
        if block.iter().fold(false, |any, &v| any | (v > threshold)) {
            for (i, &v) in block.iter().enumerate() {
                offer(&mut best, &mut threshold, v, k + b * BLOCK + i);
            }
        }
    }
    let start = values.len() - blocks.remainder().len();
    for (i, &v) in blocks.remainder().iter().enumerate() {
        offer(&mut best, &mut threshold, v, start + i);
    }
    for (id, &(_, e)) in ids.iter_mut().zip(best.iter()) {
        *id = e as i32;
    }
}

/// Group-limited routing: keeps the `topk_groups` groups with the largest sum of their top
/// `per_group` values (ties → lower group) and sets every other value to -inf.
pub fn mask_groups<F: Accum>(
    values: &mut [F],
    limit: GroupLimit,
    per_group: usize,
    group_scores: &mut Vec<F>,
    scratch: &mut Vec<usize>,
) {
    let group_size = values.len() / limit.num_groups;
    group_scores.clear();
    let mut picked = vec![0i32; per_group];
    for g in 0..limit.num_groups {
        let members = &values[g * group_size..(g + 1) * group_size];
        top_k(members, &mut picked, scratch);
        let mut sum = F::ZERO;
        for &i in &picked {
            sum += members[i as usize];
        }
        group_scores.push(sum);
    }
    let mut kept_groups = vec![0i32; limit.topk_groups];
    top_k(group_scores, &mut kept_groups, scratch);
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
        top_k(&[1.0f32, 2.0, 2.0, 2.0], &mut ids, &mut Vec::new());
        assert_eq!(ids, [1, 2]);
        let mut ids = [0i32; 9];
        top_k(&[0.5f32; 12], &mut ids, &mut Vec::new());
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn groups_mask_all_but_the_best() {
        // groups: [0,1] sum-of-top1 = 0.9, [2,3] = 0.5, [4,5] = 0.9 → keep groups 0 and 2 (tie → lower).
        let mut v = vec![0.9f32, 0.1, 0.5, 0.4, 0.2, 0.9];
        mask_groups(&mut v, GroupLimit { num_groups: 3, topk_groups: 2 }, 1, &mut Vec::new(), &mut Vec::new());
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
            top_k(&values, &mut ids, &mut Vec::new());
            prop_assert_eq!(ids, naive_top_k(&values, k));
        }
    }
}
