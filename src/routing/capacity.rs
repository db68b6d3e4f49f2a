//! Capacity resolution and the permuted-buffer layout (rows per expert, total rows) it implies.

use super::options::{check_num_experts, CapacityRequest, RouteOptions};
use crate::error::{Error, Result};

/// The largest row count an int32 row index can address.
pub const MAX_ROWS: i64 = i32::MAX as i64;

/// The layout of the permuted buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// E segments of exactly `capacity` rows.
    Capacity(usize),
    /// Every pick kept; each expert's segment rounded up to a multiple of `pad_to`.
    Dropless { pad_to: usize },
}

impl Layout {
    /// The capacity of every expert, None when dropless.
    pub fn capacity(self) -> Option<usize> {
        match self {
            Layout::Capacity(c) => Some(c),
            Layout::Dropless { .. } => None,
        }
    }
}

fn overflow(arg: &'static str, what: &'static str, value: u128) -> Error {
    Error::IndexOverflow { arg, what, value, limit: MAX_ROWS }
}

/// Checks that `num_tokens` fits the int32 token index.
pub fn check_num_tokens(num_tokens: usize) -> Result<()> {
    if num_tokens as u128 > MAX_ROWS as u128 {
        return Err(overflow("logits", "number of tokens", num_tokens as u128));
    }
    Ok(())
}

/// Resolves the capacity options of a token-choice route into a layout:
/// C = capacity or ceil(capacity_factor * T * k / E), then max(C, min_capacity), then rounded up to
/// a multiple of capacity_multiple. Neither capacity nor capacity_factor → dropless.
pub fn resolve_capacity(
    request: &CapacityRequest,
    num_tokens: usize,
    top_k: usize,
    num_experts: usize,
    pad_to: usize,
) -> Result<Layout> {
    request.check()?;
    let base = match (request.capacity, request.capacity_factor) {
        (None, None) => return Ok(Layout::Dropless { pad_to }),
        (Some(c), _) => c as u128,
        (None, Some(f)) => {
            let c = (f * num_tokens as f64 * top_k as f64 / num_experts as f64).ceil();
            if c > MAX_ROWS as f64 {
                return Err(overflow("capacity_factor", "capacity", c.min(u128::MAX as f64) as u128));
            }
            c as u128
        }
    };
    let c = base.max(request.min_capacity as u128);
    let m = request.capacity_multiple as u128;
    let c = c.div_ceil(m) * m;
    Ok(Layout::Capacity(usize::try_from(c).unwrap_or(usize::MAX)))
}

/// The number of rows R of the permuted buffer (static: a function of shapes and options only).
pub fn num_rows(layout: Layout, num_tokens: usize, top_k: usize, num_experts: usize) -> Result<usize> {
    let (rows, arg) = match layout {
        Layout::Capacity(c) => (num_experts as u128 * c as u128, "capacity"),
        Layout::Dropless { pad_to: 1 } => (num_tokens as u128 * top_k as u128, "logits"),
        Layout::Dropless { pad_to } => (
            num_tokens as u128 * top_k as u128 + num_experts as u128 * (pad_to as u128 - 1),
            "pad_to",
        ),
    };
    if rows > MAX_ROWS as u128 {
        return Err(overflow(arg, "number of permuted rows", rows));
    }
    Ok(rows as usize)
}

/// The layout and row count of a token-choice route of `num_tokens` tokens over `num_experts`
/// experts, after checking every option: the shapes of its plan, whichever backend builds it.
pub fn route_layout(options: &RouteOptions, num_tokens: usize, num_experts: usize) -> Result<(Layout, usize)> {
    options.check(num_experts)?;
    check_num_tokens(num_tokens)?;
    let k = options.top_k;
    let layout = resolve_capacity(&options.capacity, num_tokens, k, num_experts, options.pad_to)?;
    let rows = num_rows(layout, num_tokens, k, num_experts)?;
    Ok((layout, rows))
}

/// The layout and row count of a plan built from given picks ([num_tokens, top_k], any top_k: a
/// token may pick an expert twice, and unused slots count as picks for the row count), after
/// checking every option.
pub fn picks_layout(
    request: &CapacityRequest,
    pad_to: usize,
    num_tokens: usize,
    top_k: usize,
    num_experts: usize,
) -> Result<(Layout, usize)> {
    if num_experts == 0 {
        return Err(Error::Argument { arg: "num_experts", got: "0".into(), expected: "an integer >= 1".into() });
    }
    if num_tokens as u128 > MAX_ROWS as u128 {
        return Err(overflow("expert_ids", "number of tokens", num_tokens as u128));
    }
    if pad_to == 0 {
        return Err(Error::Argument { arg: "pad_to", got: "0".into(), expected: "an integer >= 1".into() });
    }
    let layout = resolve_capacity(request, num_tokens, top_k, num_experts, pad_to)?;
    let rows = num_rows(layout, num_tokens, top_k, num_experts)?;
    Ok((layout, rows))
}

/// The capacity C and row count (E * C) of an expert choice, after checking its arguments.
pub fn expert_choice_layout(
    num_tokens: usize,
    num_experts: usize,
    capacity: Option<usize>,
    capacity_factor: f64,
) -> Result<(usize, usize)> {
    check_num_experts(num_experts)?;
    check_num_tokens(num_tokens)?;
    let c = expert_choice_capacity(capacity, capacity_factor, num_tokens, num_experts)?;
    Ok((c, num_rows(Layout::Capacity(c), num_tokens, num_experts, num_experts)?))
}

/// Expert-choice capacity: `capacity` or ceil(T * capacity_factor / E).
fn expert_choice_capacity(
    capacity: Option<usize>,
    capacity_factor: f64,
    num_tokens: usize,
    num_experts: usize,
) -> Result<usize> {
    if let Some(c) = capacity {
        return Ok(c);
    }
    if !(capacity_factor.is_finite() && capacity_factor > 0.0) {
        return Err(Error::Argument {
            arg: "capacity_factor",
            got: capacity_factor.to_string(),
            expected: "a finite number > 0".into(),
        });
    }
    let c = (num_tokens as f64 * capacity_factor / num_experts as f64).ceil();
    if c > MAX_ROWS as f64 {
        return Err(overflow("capacity_factor", "capacity", c.min(u128::MAX as f64) as u128));
    }
    Ok(c as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(capacity: Option<usize>, factor: Option<f64>, min: usize, multiple: usize) -> CapacityRequest {
        CapacityRequest { capacity, capacity_factor: factor, min_capacity: min, capacity_multiple: multiple }
    }

    #[test]
    fn capacity_rules() {
        assert_eq!(resolve_capacity(&req(None, None, 0, 1), 10, 2, 4, 1).unwrap(), Layout::Dropless { pad_to: 1 });
        assert_eq!(resolve_capacity(&req(Some(3), None, 0, 1), 10, 2, 4, 1).unwrap(), Layout::Capacity(3));
        // ceil(1.0 * 10 * 2 / 4) = 5
        assert_eq!(resolve_capacity(&req(None, Some(1.0), 0, 1), 10, 2, 4, 1).unwrap(), Layout::Capacity(5));
        assert_eq!(resolve_capacity(&req(None, Some(1.0), 7, 1), 10, 2, 4, 1).unwrap(), Layout::Capacity(7));
        assert_eq!(resolve_capacity(&req(None, Some(1.0), 7, 4), 10, 2, 4, 1).unwrap(), Layout::Capacity(8));
        assert_eq!(resolve_capacity(&req(Some(0), None, 0, 4), 10, 2, 4, 1).unwrap(), Layout::Capacity(0));
        assert!(resolve_capacity(&req(Some(1), Some(1.0), 0, 1), 10, 2, 4, 1).is_err());
        assert!(resolve_capacity(&req(None, Some(0.0), 0, 1), 10, 2, 4, 1).is_err());
    }

    #[test]
    fn row_counts_and_overflow() {
        assert_eq!(num_rows(Layout::Dropless { pad_to: 1 }, 10, 2, 4).unwrap(), 20);
        assert_eq!(num_rows(Layout::Dropless { pad_to: 8 }, 10, 2, 4).unwrap(), 20 + 4 * 7);
        assert_eq!(num_rows(Layout::Capacity(5), 10, 2, 4).unwrap(), 20);
        assert!(num_rows(Layout::Capacity(1 << 30), 10, 2, 4).is_err());
    }

    #[test]
    fn layouts_check_their_arguments() {
        let mut options = RouteOptions::new(2);
        assert_eq!(route_layout(&options, 10, 4).unwrap(), (Layout::Dropless { pad_to: 1 }, 20));
        options.capacity.capacity_factor = Some(1.0);
        assert_eq!(route_layout(&options, 10, 4).unwrap(), (Layout::Capacity(5), 20));
        assert_eq!(Layout::Capacity(5).capacity(), Some(5));
        assert_eq!(route_layout(&options, 10, 1).unwrap_err().to_string(),
                   "k: got 2, expected an integer in [1, 1] (the number of experts)");
        assert!(route_layout(&options, 10, 0).is_err());
        assert_eq!(expert_choice_layout(10, 4, None, 1.0).unwrap(), (3, 12));
        assert_eq!(expert_choice_layout(10, 4, Some(2), 1.0).unwrap(), (2, 8));
        assert_eq!(expert_choice_layout(10, 0, None, 1.0).unwrap_err().to_string(),
                   "logits: got 0 experts, expected at least 1 expert (logits.shape[1] >= 1)");
        assert!(expert_choice_layout(10, 4, None, 0.0).is_err());
    }
}
