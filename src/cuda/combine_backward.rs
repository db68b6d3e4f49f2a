//! Combine's backward pass on the GPU: grad_yp[r] = w · grad_y[src[r]], grad_w = ⟨grad_y, yp[r]⟩.

use super::common::{check_i32, pack, row_block, vector_kernel, Rows};
use super::context::Device;
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;

/// The combine backward kernels by dtype and elements per thread.
const COMBINE_BACKWARD_KERNELS: [(&str, &str); 8] = [
    ("f32_v1", "combine_backward_f32_v1"), ("f32_v4", "combine_backward_f32_v4"), ("f64_v1", "combine_backward_f64_v1"),
    ("f64_v2", "combine_backward_f64_v2"), ("f16_v1", "combine_backward_f16_v1"), ("f16_v8", "combine_backward_f16_v8"),
    ("bf16_v1", "combine_backward_bf16_v1"), ("bf16_v8", "combine_backward_bf16_v8"),
];

/// grad_yp (one block per row) and grad_w (must be zeroed by the caller).
#[allow(clippy::too_many_arguments)]
pub fn combine_backward(device: &Device, stream: u64, dtype: DType, grad_y: Rows, yp: Rows, hidden: usize, dest: u64, src: u64,
                        slots: usize, weights: u64, grad_yp: u64, grad_w: u64) -> Result<()> {
    if yp.rows == 0 {
        return Ok(());
    }
    check_i32("T", grad_y.rows)?;
    check_i32("H", hidden)?;
    device.make_current()?;
    let v = pack(dtype, hidden, &[grad_y.ptr, yp.ptr, grad_yp]);
    let kernel = vector_kernel(&COMBINE_BACKWARD_KERNELS, dtype, v)?;
    let block = row_block(hidden / v, 128);
    let args = Args::new().ptr(grad_y.ptr).ptr(yp.ptr).ptr(dest).ptr(src).ptr(weights).ptr(grad_yp).ptr(grad_w);
    Launch { device, stream }.run(kernel, yp.rows as u64, block, 0, args.i32(grad_y.rows as i32).i32(slots as i32).i32(hidden as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::context::has_kernel;

    #[test]
    fn its_kernels_are_embedded() {
        assert!(COMBINE_BACKWARD_KERNELS.iter().all(|(_, name)| has_kernel(name)));
    }
}
