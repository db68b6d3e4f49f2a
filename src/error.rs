//! The one error type of the core; the bindings map each variant to a Python exception class.

/// Every way a moeroute call can fail. Messages name the argument and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An array has the wrong rank or shape.
    #[error("{arg}: got shape {got:?}, expected {expected}")]
    Shape { arg: &'static str, got: Vec<usize>, expected: String },

    /// An array has an unsupported dtype, or an argument has the wrong type.
    #[error("{arg}: got {got}, expected {expected}")]
    DType { arg: &'static str, got: String, expected: String },

    /// A scalar option is out of its valid range.
    #[error("{arg}: got {got}, expected {expected}")]
    Argument { arg: &'static str, got: String, expected: String },

    /// The logits contain NaN, or a row that is entirely -inf.
    #[error("{arg}: {problem} at token {token}")]
    Logits { arg: &'static str, problem: &'static str, token: usize },

    /// A routing plan's arrays are inconsistent with each other.
    #[error("{arg}: {problem}")]
    Plan { arg: &'static str, problem: String },

    /// A size would overflow the int32 row index.
    #[error("{arg}: {what} = {value} exceeds the int32 row index limit {limit}")]
    IndexOverflow { arg: &'static str, what: &'static str, value: u128, limit: i64 },

    /// The CUDA driver is missing or failed (CUDA ops only).
    #[error("CUDA: {problem}")]
    Cuda { problem: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with `Error::Argument` unless the condition holds.
#[macro_export]
macro_rules! ensure_argument {
    ($cond:expr, $arg:expr, $got:expr, $expected:expr) => {
        if !($cond) {
            return Err($crate::error::Error::Argument {
                arg: $arg,
                got: $got.to_string(),
                expected: $expected.to_string(),
            });
        }
    };
}

/// Returns early with `Error::Plan` unless the condition holds.
#[macro_export]
macro_rules! ensure_plan {
    ($cond:expr, $arg:expr, $($fmt:tt)+) => {
        if !($cond) {
            return Err($crate::error::Error::Plan { arg: $arg, problem: format!($($fmt)+) });
        }
    };
}
