//! Plans from given picks on the GPU: the picks copied in (ids outside [0, E) unused), then the same
//! row layout as a route's (plan kernels), then dropped picks' weights zeroed.

use super::common::{check_i32, fill_padding, kernel_name, PlanPointers, SHARED_LIMIT};
use super::context::{cuda_error, Device};
use super::launch::{Args, Launch};
use super::route::{finalize_weights, lay_out_rows, PlanRows};
use super::workspace::picks_workspace;
use crate::routing::options::PicksOptions;
use crate::dtype::DType;
use crate::error::Result;
use crate::routing::capacity::{picks_layout, Layout};

/// Per-expert counters of the plan kernels live in shared memory.
const MAX_EXPERTS: usize = SHARED_LIMIT / 4;

/// The import kernel of each weights dtype.
const IMPORT_KERNELS: [(&str, &str); 4] =
    [("f32", "import_picks_f32"), ("f64", "import_picks_f64"), ("f16", "import_picks_f16"), ("bf16", "import_picks_bf16")];

/// Everything a CUDA plan from given picks needs besides its options.
pub struct PicksCall {
    pub stream: u64,
    /// int64 [T, k] expert ids.
    pub expert_ids: u64,
    /// [T, k] weights of `dtype`.
    pub weights: u64,
    pub dtype: DType,
    pub num_tokens: usize,
    pub top_k: usize,
    pub num_experts: usize,
    /// The plan's outputs; probs must be zeroed by the caller.
    pub out: PlanPointers,
    pub workspace: u64,
    pub workspace_bytes: usize,
}

/// The plan of the given picks (see cpu::given_picks::plan_from_picks for what it holds).
pub fn plan_from_topk(device: &Device, call: &PicksCall, options: &PicksOptions) -> Result<()> {
    let (t, e, k) = (call.num_tokens, call.num_experts, call.top_k);
    let (layout, rows) = picks_layout(&options.capacity, options.pad_to, t, k, e)?;
    if e > MAX_EXPERTS {
        return Err(cuda_error(format!("num_experts: {e}, the CUDA kernels support at most {MAX_EXPERTS}")));
    }
    check_i32("T * k", t * k)?;
    check_i32("rows", rows)?;
    let ws = picks_workspace(t, e, k);
    ws.check(call.workspace_bytes)?;
    device.make_current()?;
    let go = Launch { device, stream: call.stream };
    let out = &call.out;
    fill_padding(&go, out.src, rows)?;
    if t > 0 && k > 0 {
        let kernel = kernel_name(&IMPORT_KERNELS, call.dtype.suffix())?;
        let args = Args::new().ptr(call.expert_ids).ptr(call.weights).i32(t as i32).i32(k as i32).i32(e as i32);
        let args = args.ptr(out.expert_ids).ptr(out.weights).ptr(out.probs).ptr(out.dest);
        go.run(kernel, t.div_ceil(128) as u64, 128, 0, args)?;
    }
    let acc = if call.dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let p = PlanRows { out, workspace: call.workspace, ws: &ws, num_tokens: t, num_experts: e, top_k: k, dtype: acc };
    lay_out_rows(&go, &p, layout, options.priority)?;
    if matches!(layout, Layout::Capacity(_)) {
        finalize_weights(&go, out, acc, t, k, false, 1.0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::context::has_kernel;

    #[test]
    fn every_import_kernel_is_embedded() {
        for (_, name) in IMPORT_KERNELS {
            assert!(has_kernel(name), "{name}");
        }
    }
}
