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

/// plan.dest and plan.src must describe the same one-to-one map between kept (token, slot) pairs
/// and non-padding rows: src[dest[t,s]] == t, no row twice, and every row with a token kept by
/// one of its slots. Kernels that write each kept pair's row from a different thread rely on it.
/// Both arrays must have passed `check_dest` and `check_src`.
pub fn check_one_to_one(dest: &[i32], src: &[i32], slots: usize) -> Result<()> {
    let mut kept = 0usize;
    for (i, &d) in dest.iter().enumerate() {
        if d < 0 {
            continue;
        }
        let (t, s) = (i / slots, i % slots);
        let owner = src[d as usize];
        if owner as i64 != t as i64 {
            return Err(Error::Plan {
                arg: "plan.dest",
                problem: format!("is {d} at token {t}, slot {s}, but plan.src gives row {d} to token {owner}"),
            });
        }
        if let Some(first) = dest[i - s..i].iter().position(|&e| e == d) {
            return Err(Error::Plan {
                arg: "plan.dest",
                problem: format!("has row {d} twice at token {t} (slots {first} and {s})"),
            });
        }
        kept += 1;
    }
    if kept != src.iter().filter(|&&t| t >= 0).count() {
        // Some row names a token none of whose slots has that row: find the first one.
        let mut referenced = vec![false; src.len()];
        dest.iter().filter(|&&d| d >= 0).for_each(|&d| referenced[d as usize] = true);
        let r = src.iter().zip(&referenced).position(|(&t, &used)| t >= 0 && !used).expect("counts differ");
        return Err(Error::Plan {
            arg: "plan.src",
            problem: format!("row {r} names token {}, but no slot of token {} has that row in plan.dest", src[r], src[r]),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_one_accepts_a_plan_and_rejects_each_kind_of_mismatch() {
        // token 0 -> rows 1, 0; token 1 -> row 2, slot 1 dropped; row 3 padding.
        let (dest, src) = ([1, 0, 2, -1], [0, 0, 1, -1]);
        assert!(check_one_to_one(&dest, &src, 2).is_ok());
        let err = |dest: &[i32], src: &[i32]| check_one_to_one(dest, src, 2).unwrap_err().to_string();
        assert!(err(&[1, 0, 1, -1], &src).contains("gives row 1 to token 0"));
        assert!(err(&[1, 1, 2, -1], &[0, 0, 1, -1]).contains("row 1 twice"));
        assert!(err(&[1, -1, 2, -1], &src).contains("row 0 names token 0"));
    }
}
