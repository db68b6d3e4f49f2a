//! Range checks of a plan's index arrays, run by every kernel before it indexes with them, and the
//! private copy (`snapshot`) the bindings take of arrays other threads may be writing.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU8, Ordering};

use crate::error::{Error, Result};

/// An index type (i32, i64) that can be read from memory another thread may be writing.
pub trait SharedIndex: Copy {
    /// Reads the value at `ptr` with one relaxed atomic load.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and aligned as `Self::aligned` requires.
    unsafe fn load(ptr: *const Self) -> Self;
    /// Whether `ptr` is aligned for `load`.
    fn aligned(ptr: *const Self) -> bool;
    /// The value of `size_of::<Self>()` bytes in native order.
    fn from_bytes(bytes: &[u8]) -> Self;
}

macro_rules! shared_index {
    ($t:ty, $atomic:ty) => {
        impl SharedIndex for $t {
            #[inline(always)]
            unsafe fn load(ptr: *const $t) -> $t {
                // SAFETY: the caller guarantees ptr valid and aligned for the atomic type.
                unsafe { <$atomic>::from_ptr(ptr.cast_mut()) }.load(Ordering::Relaxed)
            }
            fn aligned(ptr: *const $t) -> bool {
                (ptr as usize) % std::mem::align_of::<$atomic>() == 0
            }
            fn from_bytes(bytes: &[u8]) -> $t {
                <$t>::from_ne_bytes(bytes.try_into().expect("from_bytes: one value's bytes"))
            }
        }
    };
}
shared_index!(i32, AtomicI32);
shared_index!(i64, AtomicI64);

/// A private copy of the `len` values at `ptr`: a plan's index array in memory the caller does not
/// own alone (a NumPy array or tensor that another Python thread may write while a kernel runs
/// without the GIL). Each value is read exactly once, with a relaxed atomic load (bytewise where
/// `ptr` is misaligned), so the copy is well defined however the memory changes meanwhile; the
/// kernels check the copy and index memory with it, so no value can change between its check and
/// its use.
///
/// # Safety
/// `ptr` must be valid for reads of `len` values of `T` until the call returns (it need not be
/// aligned).
pub unsafe fn snapshot<T: SharedIndex>(ptr: *const T, len: usize) -> Vec<T> {
    if len == 0 {
        return Vec::new();
    }
    if T::aligned(ptr) {
        // SAFETY: ptr..ptr + len is valid for reads (caller) and every element is aligned.
        return (0..len).map(|i| unsafe { T::load(ptr.add(i)) }).collect();
    }
    let size = std::mem::size_of::<T>();
    let bytes = ptr.cast::<u8>();
    let mut value = vec![0u8; size];
    (0..len)
        .map(|i| {
            for (b, out) in value.iter_mut().enumerate() {
                // SAFETY: byte i * size + b lies inside the len values the caller made valid;
                // AtomicU8 needs no alignment.
                *out = unsafe { AtomicU8::from_ptr(bytes.add(i * size + b).cast_mut()) }.load(Ordering::Relaxed);
            }
            T::from_bytes(&value)
        })
        .collect()
}

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
    fn snapshot_copies_aligned_and_misaligned_values() {
        let values: Vec<i32> = vec![3, -1, i32::MIN, i32::MAX, 0, 7];
        // SAFETY: the vector holds the values read.
        assert_eq!(unsafe { snapshot(values.as_ptr(), values.len()) }, values);
        assert!(unsafe { snapshot(values.as_ptr(), 0) }.is_empty());
        let wide: Vec<i64> = vec![-1, i64::MAX, 42];
        assert_eq!(unsafe { snapshot(wide.as_ptr(), wide.len()) }, wide);
        // The same values one byte into a buffer: every element misaligned.
        let mut bytes = vec![0u8; 1 + 4 * values.len()];
        for (i, v) in values.iter().enumerate() {
            bytes[1 + 4 * i..5 + 4 * i].copy_from_slice(&v.to_ne_bytes());
        }
        let ptr = bytes[1..].as_ptr().cast::<i32>();
        assert!(!i32::aligned(ptr));
        // SAFETY: the buffer holds len * 4 bytes from ptr; snapshot reads them bytewise.
        assert_eq!(unsafe { snapshot(ptr, values.len()) }, values);
    }

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
