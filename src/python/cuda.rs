//! Bindings of the CUDA ops: device pointers (ints) of tensors PyTorch allocated, and the stream
//! (torch's current one) the kernels run on. Shapes were checked by the Python front.

use pyo3::prelude::*;

use super::routing::{PicksOptionsArg, RouteOptionsArg};
use crate::cuda::combine::combine;
use crate::cuda::combine_backward::combine_backward;
use crate::cuda::expert_choice::{expert_choice, ExpertChoiceCall};
use crate::cuda::permute::permute;
use crate::cuda::permute_backward::permute_backward;
use crate::cuda::plan_from_topk::{plan_from_topk, PicksCall};
use crate::cuda::route::{route, RouteCall};
use crate::cuda::route_backward::{route_backward, RouteBackwardCall};
use crate::cuda::workspace::{expert_choice_workspace, picks_workspace, route_workspace};
use crate::cuda::{self, PlanPointers, Rows};
use crate::dtype::DType;
use crate::routing::{Normalize, ScoreFunction};

/// Whether the NVIDIA driver can be loaded.
#[pyfunction]
fn cuda_driver_available() -> bool {
    cuda::driver_available()
}

/// Initializes device `device` (driver, context, kernel modules); CudaError if it cannot.
#[pyfunction]
fn cuda_init(device: i32) -> PyResult<()> {
    cuda::device(device)?;
    Ok(())
}

/// Bytes of scratch memory a route needs.
#[pyfunction]
#[pyo3(signature = (dtype_name, num_tokens, num_experts, k, num_groups))]
fn cuda_route_workspace(dtype_name: &str, num_tokens: usize, num_experts: usize, k: usize, num_groups: Option<usize>) -> PyResult<usize> {
    Ok(route_workspace(DType::parse_arg(dtype_name, "logits")?, num_tokens, num_experts, k, num_groups).bytes)
}

/// Bytes of scratch memory an expert choice needs.
#[pyfunction]
fn cuda_expert_choice_workspace(dtype_name: &str, num_tokens: usize, num_experts: usize) -> PyResult<usize> {
    Ok(expert_choice_workspace(DType::parse_arg(dtype_name, "logits")?, num_tokens, num_experts).bytes)
}

/// Bytes of scratch memory a plan from given picks needs.
#[pyfunction]
fn cuda_plan_from_topk_workspace(num_tokens: usize, top_k: usize, num_experts: usize) -> usize {
    picks_workspace(num_tokens, num_experts, top_k).bytes
}

/// The plan of the given picks (int64 ids and weights of `dtype_name`, [T, k] each) into the plan
/// arrays at `outputs` (in `PLAN_FIELDS` order; probs zeroed by the caller).
#[pyfunction]
#[pyo3(signature = (device, stream, expert_ids, weights, dtype_name, num_tokens, top_k, num_experts, options, outputs,
                    workspace, workspace_bytes))]
#[allow(clippy::too_many_arguments)]
fn cuda_plan_from_topk(
    device: i32,
    stream: u64,
    expert_ids: u64,
    weights: u64,
    dtype_name: &str,
    num_tokens: usize,
    top_k: usize,
    num_experts: usize,
    options: PicksOptionsArg,
    outputs: [u64; 8],
    workspace: u64,
    workspace_bytes: usize,
) -> PyResult<()> {
    let options = options.into_options()?;
    let call = PicksCall {
        stream,
        expert_ids,
        weights,
        dtype: DType::parse_arg(dtype_name, "weights")?,
        num_tokens,
        top_k,
        num_experts,
        out: PlanPointers::from_array(outputs),
        workspace,
        workspace_bytes,
    };
    plan_from_topk(cuda::device(device)?, &call, &options)?;
    Ok(())
}

/// Routes the logits at `logits_ptr` into the plan arrays at `outputs` (in `PLAN_FIELDS` order).
#[pyfunction]
#[pyo3(signature = (device, stream, logits_ptr, dtype_name, num_tokens, num_experts, options, bias_ptr, outputs,
                    workspace, workspace_bytes))]
#[allow(clippy::too_many_arguments)]
fn cuda_route(
    device: i32,
    stream: u64,
    logits_ptr: u64,
    dtype_name: &str,
    num_tokens: usize,
    num_experts: usize,
    options: RouteOptionsArg,
    bias_ptr: Option<u64>,
    outputs: [u64; 8],
    workspace: u64,
    workspace_bytes: usize,
) -> PyResult<()> {
    let options = options.into_options(None)?;
    let call = RouteCall {
        stream,
        logits: logits_ptr,
        dtype: DType::parse_arg(dtype_name, "logits")?,
        num_tokens,
        num_experts,
        bias: bias_ptr,
        out: PlanPointers::from_array(outputs),
        workspace,
        workspace_bytes,
    };
    route(cuda::device(device)?, &call, &options)?;
    Ok(())
}

/// Expert choice over the logits at `logits` into the plan arrays at `outputs` (in `PLAN_FIELDS`
/// order).
#[pyfunction]
#[pyo3(signature = (device, stream, logits, dtype_name, num_tokens, num_experts, capacity, capacity_factor, outputs,
                    workspace, workspace_bytes))]
#[allow(clippy::too_many_arguments)]
fn cuda_expert_choice(
    device: i32,
    stream: u64,
    logits: u64,
    dtype_name: &str,
    num_tokens: usize,
    num_experts: usize,
    capacity: Option<usize>,
    capacity_factor: f64,
    outputs: [u64; 8],
    workspace: u64,
    workspace_bytes: usize,
) -> PyResult<()> {
    let call = ExpertChoiceCall {
        stream,
        logits,
        dtype: DType::parse_arg(dtype_name, "logits")?,
        num_tokens,
        num_experts,
        out: PlanPointers::from_array(outputs),
        workspace,
        workspace_bytes,
    };
    expert_choice(cuda::device(device)?, &call, capacity, capacity_factor)?;
    Ok(())
}

/// xp ([rows, hidden]) = x ([tokens, hidden]) gathered by src.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_permute(device: i32, stream: u64, dtype_name: &str, x: u64, tokens: usize, hidden: usize, src: u64, xp: u64, rows: usize) -> PyResult<()> {
    let x = Rows { ptr: x, rows: tokens };
    let xp = Rows { ptr: xp, rows };
    permute(cuda::device(device)?, stream, DType::parse_arg(dtype_name, "x")?, x, hidden, src, xp)?;
    Ok(())
}

/// y ([tokens, hidden]) = Σ_s w · rows[dest], weights ([tokens, slots]) in the accumulation dtype.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_combine(device: i32, stream: u64, dtype_name: &str, rows: u64, num_rows: usize, hidden: usize, dest: u64, slots: usize,
                weights: u64, y: u64, tokens: usize) -> PyResult<()> {
    let rows = Rows { ptr: rows, rows: num_rows };
    let y = Rows { ptr: y, rows: tokens };
    combine(cuda::device(device)?, stream, DType::parse_arg(dtype_name, "yp")?, rows, hidden, dest, slots, weights, y)?;
    Ok(())
}

/// grad_x ([tokens, hidden]) = Σ_s grad_xp[dest]: permute's backward pass.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_permute_backward(device: i32, stream: u64, dtype_name: &str, grad_xp: u64, num_rows: usize, hidden: usize, dest: u64,
                         slots: usize, grad_x: u64, tokens: usize) -> PyResult<()> {
    let grad_xp = Rows { ptr: grad_xp, rows: num_rows };
    let grad_x = Rows { ptr: grad_x, rows: tokens };
    let dtype = DType::parse_arg(dtype_name, "grad_xp")?;
    permute_backward(cuda::device(device)?, stream, dtype, grad_xp, hidden, dest, slots, grad_x)?;
    Ok(())
}

/// grad_yp ([rows, hidden]) and grad_w ([tokens, slots], zeroed by the caller).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_combine_backward(device: i32, stream: u64, dtype_name: &str, grad_y: u64, tokens: usize, yp: u64, num_rows: usize,
                         hidden: usize, dest: u64, src: u64, slots: usize, weights: u64, grad_yp: u64, grad_w: u64) -> PyResult<()> {
    let grad_y = Rows { ptr: grad_y, rows: tokens };
    let yp = Rows { ptr: yp, rows: num_rows };
    let dtype = DType::parse_arg(dtype_name, "yp")?;
    combine_backward(cuda::device(device)?, stream, dtype, grad_y, yp, hidden, dest, src, slots, weights, grad_yp, grad_w)?;
    Ok(())
}

/// grad_logits ([tokens, experts]) from the gradients of the weights and (if given) probs, all in
/// the dtype `dtype_name` of probs (float32 or float64).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_route_backward(device: i32, stream: u64, dtype_name: &str, tokens: usize, experts: usize, slots: usize, grad_weights: u64,
                       grad_probs: Option<u64>, probs: u64, expert_ids: u64, dest: u64, score: &str, normalize: &str, scale: f64,
                       grad_logits: u64) -> PyResult<()> {
    let call = RouteBackwardCall {
        stream,
        dtype: DType::parse_accum(dtype_name, "plan.probs")?,
        num_tokens: tokens,
        num_experts: experts,
        slots,
        grad_weights,
        grad_probs,
        probs,
        expert_ids,
        dest,
        score: ScoreFunction::parse(score)?,
        normalize: Normalize::parse(normalize)?,
        scale,
        grad_logits,
    };
    route_backward(cuda::device(device)?, &call)?;
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_driver_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_init, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_route_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_expert_choice_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_route, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_plan_from_topk_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_plan_from_topk, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_expert_choice, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_permute, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_combine, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_permute_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_combine_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_route_backward, m)?)?;
    Ok(())
}
