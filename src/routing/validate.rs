//! Consistency checks for a RoutingPlan built by hand from arrays (e.g. reloaded from disk).

use crate::ensure_plan;
use crate::error::Result;

/// Borrowed plan arrays plus the dimensions they must agree with.
pub struct PlanArrays<'a> {
    pub num_tokens: usize,
    pub num_experts: usize,
    pub slots: usize,
    pub num_rows: usize,
    pub expert_ids: &'a [i32],
    pub dest: &'a [i32],
    pub src: &'a [i32],
    pub expert_offsets: &'a [i64],
    pub tokens_per_expert: &'a [i64],
    pub assigned_per_expert: &'a [i64],
    pub capacity: Option<usize>,
}

/// Checks that the index arrays describe a valid plan, so kernels can trust them.
/// Shapes are checked by the caller; this checks values and cross-references.
pub fn validate_plan(p: &PlanArrays) -> Result<()> {
    let (t_count, e_count, s_count, r_count) = (p.num_tokens, p.num_experts, p.slots, p.num_rows);
    let offsets = p.expert_offsets;
    ensure_plan!(offsets.len() == e_count + 1, "plan.expert_offsets", "has {} entries, expected num_experts + 1 = {}", offsets.len(), e_count + 1);
    ensure_plan!(offsets[0] == 0, "plan.expert_offsets", "starts at {}, expected 0", offsets[0]);
    for e in 0..e_count {
        ensure_plan!(offsets[e] <= offsets[e + 1], "plan.expert_offsets", "decreases at expert {e}: {} > {}", offsets[e], offsets[e + 1]);
    }
    ensure_plan!(offsets[e_count] as i128 <= r_count as i128, "plan.expert_offsets", "ends at {}, past the {} rows of plan.src", offsets[e_count], r_count);
    if let Some(c) = p.capacity {
        // (u128: a hand-built capacity may be anything; the products must not wrap)
        let rows = e_count as u128 * c as u128;
        ensure_plan!(r_count as u128 == rows, "plan.src", "has {} rows, expected num_experts * capacity = {} * {} = {}", r_count, e_count, c, rows);
        for (e, &offset) in offsets.iter().enumerate() {
            ensure_plan!(offset as i128 == (e as u128 * c as u128) as i128, "plan.expert_offsets", "is {offset} at expert {e}, expected {} for capacity {c}", e as u128 * c as u128);
        }
    }

    let mut row_owner = vec![-1i64; r_count];
    let mut kept = vec![0i64; e_count];
    for t in 0..t_count {
        for s in 0..s_count {
            let i = t * s_count + s;
            let (e, d) = (p.expert_ids[i], p.dest[i]);
            ensure_plan!(e >= -1 && (e as i64) < e_count as i64, "plan.expert_ids", "is {e} at token {t}, slot {s}; expected -1 or an expert in [0, {e_count})");
            ensure_plan!(d >= -1 && (d as i64) < r_count as i64, "plan.dest", "is {d} at token {t}, slot {s}; expected -1 or a row in [0, {r_count})");
            if d < 0 {
                continue;
            }
            ensure_plan!(e >= 0, "plan.dest", "is {d} at token {t}, slot {s}, an unused slot (expert_ids = -1); expected -1");
            let (e, d) = (e as usize, d as usize);
            ensure_plan!(offsets[e] <= d as i64 && (d as i64) < offsets[e + 1], "plan.dest", "row {d} at token {t}, slot {s} is outside expert {e}'s rows [{}, {})", offsets[e], offsets[e + 1]);
            ensure_plan!(row_owner[d] < 0, "plan.dest", "row {d} is used twice (token {t}, slot {s})");
            row_owner[d] = t as i64;
            kept[e] += 1;
        }
    }
    for (r, (&src, &owner)) in p.src.iter().zip(&row_owner).enumerate() {
        ensure_plan!(src as i64 == owner, "plan.src", "is {src} at row {r}, but {}", if owner < 0 { "no pick has that row (expected -1)".to_string() } else { format!("token {owner} has that row") });
    }
    for e in 0..e_count {
        ensure_plan!(p.tokens_per_expert[e] == kept[e], "plan.tokens_per_expert", "is {} at expert {e}, but {} picks are kept", p.tokens_per_expert[e], kept[e]);
        let first_padding = offsets[e] + kept[e];
        ensure_plan!(p.src[offsets[e] as usize..first_padding as usize].iter().all(|&t| t >= 0), "plan.src", "expert {e}'s kept rows are not packed at the start of its segment [{}, {})", offsets[e], offsets[e + 1]);
        ensure_plan!(p.assigned_per_expert[e] >= kept[e], "plan.assigned_per_expert", "is {} at expert {e}, fewer than the {} kept picks", p.assigned_per_expert[e], kept[e]);
    }
    Ok(())
}
