//! Range checks of a plan's index arrays, run by every kernel before it indexes with them.

use crate::error::{Error, Result};

/// Every entry of `values` ([_, slots] row-major) must be -1 or in [0, limit); the error names
/// `arg`, the first bad entry's position and `what` a valid entry is.
pub fn check_slot_indices(values: &[i32], slots: usize, limit: usize, arg: &'static str, what: &str) -> Result<()> {
    match values.iter().position(|&v| v < -1 || v as i64 >= limit as i64) {
        None => Ok(()),
        Some(i) => Err(Error::Plan {
            arg,
            problem: format!(
                "is {} at token {}, slot {}; expected -1 or {what} in [0, {limit})",
                values[i],
                i / slots.max(1),
                i % slots.max(1)
            ),
        }),
    }
}

/// plan.dest entries must be -1 (dropped / unused) or a row index.
pub fn check_dest(dest: &[i32], slots: usize, num_rows: usize) -> Result<()> {
    check_slot_indices(dest, slots, num_rows, "plan.dest", "a row")
}

/// plan.expert_ids entries must be -1 (unused) or an expert index.
pub fn check_expert_ids(expert_ids: &[i32], slots: usize, num_experts: usize) -> Result<()> {
    check_slot_indices(expert_ids, slots, num_experts, "plan.expert_ids", "an expert")
}

/// plan.src entries must be -1 (padding) or a token index.
pub fn check_src(src: &[i32], num_tokens: usize) -> Result<()> {
    match src.iter().position(|&t| t < -1 || t as i64 >= num_tokens as i64) {
        None => Ok(()),
        Some(r) => Err(Error::Plan {
            arg: "plan.src",
            problem: format!("is {} at row {r}; expected -1 or a token index in [0, {num_tokens})", src[r]),
        }),
    }
}
