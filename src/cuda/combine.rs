//! Combine on the GPU: y[t] = Σ_s w[t,s] · rows[dest[t,s]]; its kernel also serves permute's backward pass.

use super::common::{check_i32, pack, row_block, vector_kernel, Rows};
use super::context::Device;
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;

/// The combine kernels by dtype and elements per thread.
const COMBINE_KERNELS: [(&str, &str); 8] = [
    ("f32_v1", "combine_f32_v1"), ("f32_v4", "combine_f32_v4"), ("f64_v1", "combine_f64_v1"), ("f64_v2", "combine_f64_v2"),
    ("f16_v1", "combine_f16_v1"), ("f16_v8", "combine_f16_v8"), ("bf16_v1", "combine_bf16_v1"), ("bf16_v8", "combine_bf16_v8"),
];

/// y[t] = Σ_s w[t,s] · rows[dest[t,s]], with `weights` ([T, S], accumulation dtype) on the device.
#[allow(clippy::too_many_arguments)]
pub fn combine(device: &Device, stream: u64, dtype: DType, rows: Rows, hidden: usize, dest: u64, slots: usize, weights: u64, y: Rows) -> Result<()> {
    gather_sum(device, stream, dtype, rows, hidden, dest, slots, Some(weights), y)
}

/// y[t] = Σ_s w[t,s] · rows[dest[t,s]], w = 1 without weights (the kernel gets a null pointer).
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_sum(device: &Device, stream: u64, dtype: DType, rows: Rows, hidden: usize, dest: u64, slots: usize,
                         weights: Option<u64>, y: Rows) -> Result<()> {
    if y.rows == 0 || hidden == 0 {
        return Ok(());
    }
    check_i32("R", rows.rows)?;
    check_i32("H", hidden)?;
    device.make_current()?;
    let v = pack(dtype, hidden, &[rows.ptr, y.ptr]);
    let kernel = vector_kernel(&COMBINE_KERNELS, dtype, v)?;
    let block = row_block(hidden / v, 128);
    let args = Args::new().ptr(rows.ptr).ptr(dest).opt_ptr(weights).ptr(y.ptr).i32(slots as i32).i32(hidden as i32).i32(rows.rows as i32);
    Launch { device, stream }.run(kernel, y.rows as u64, block, 0, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::context::has_kernel;

    #[test]
    fn its_kernels_are_embedded() {
        assert!(COMBINE_KERNELS.iter().all(|(_, name)| has_kernel(name)));
    }
}
