//! Permute's backward pass on the GPU: the unweighted gather-sum, combine's kernel with null weights.

use super::combine::gather_sum;
use super::common::Rows;
use super::context::Device;
use crate::dtype::DType;
use crate::error::Result;

/// grad_x ([T, hidden]) = the sum of the grad_xp rows each token's picks went to.
#[allow(clippy::too_many_arguments)]
pub fn permute_backward(device: &Device, stream: u64, dtype: DType, grad_xp: Rows, hidden: usize, dest: u64, slots: usize, grad_x: Rows) -> Result<()> {
    gather_sum(device, stream, dtype, grad_xp, hidden, dest, slots, None, grad_x)
}
