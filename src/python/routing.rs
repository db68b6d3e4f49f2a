//! Bindings of route, expert_choice, plan_from_topk, route_backward, plan validation and plan
//! layouts, and the options objects route's and plan_from_topk's bindings (CPU and CUDA) read.

use numpy::{Element, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::arrays::{accum_dtype, expect_shape, from_vec, index_snapshot, input, output_slice, slice, with_accum, with_activation, output, Stored};
use super::errors::{run_kernel, run_task_kernel};
use crate::cpu;
use crate::cpu::route_backward::WeightsGraph;
use crate::dtype::DType;
use crate::routing::options::{CapacityRequest, PicksOptions};
use crate::routing::validate::{validate_plan as validate, PlanArrays};
use crate::routing::{self as core_routing, GroupLimit, Normalize, PlanFields, Priority, RouteOptions, RoutingPlan, ScoreFunction,
                     PLAN_FIELDS};

/// The plan as a tuple: its NumPy arrays in `PLAN_FIELDS` order (no copies), then the capacity or
/// None.
fn plan_tuple<'py, F: Element>(py: Python<'py>, plan: RoutingPlan<F>) -> PyResult<Bound<'py, PyTuple>> {
    let (t, e, s) = (plan.num_tokens, plan.num_experts, plan.slots);
    let arrays = PlanFields {
        weights: from_vec(py, plan.weights, &[t, s])?,
        probs: from_vec(py, plan.probs, &[t, e])?,
        expert_ids: from_vec(py, plan.expert_ids, &[t, s])?,
        dest: from_vec(py, plan.dest, &[t, s])?,
        src: from_vec(py, plan.src, &[plan.num_rows])?,
        expert_offsets: from_vec(py, plan.expert_offsets, &[e + 1])?,
        tokens_per_expert: from_vec(py, plan.tokens_per_expert, &[e])?,
        assigned_per_expert: from_vec(py, plan.assigned_per_expert, &[e])?,
    };
    let mut items = Vec::from(arrays.into_array());
    items.push(plan.capacity.into_pyobject(py)?.into_any());
    PyTuple::new(py, items)
}

fn logits_shape(shape: &[usize]) -> PyResult<(usize, usize)> {
    expect_shape("logits", shape, &[None, None])?;
    Ok((shape[0], shape[1]))
}

/// route's options as the Python front passes them: an object whose attributes are read by
/// name (`moeroute.options.RouteOptions`, or anything with these attributes): the gating ones
/// here, the layout ones (capacity, priority, pad_to) as plan_from_topk's `PicksOptionsArg` reads
/// them. Its `bias` is not read: a bias comes as an argument of its own (an array on the CPU, a
/// pointer on CUDA).
pub(super) struct RouteOptionsArg {
    gating: GatingArg,
    layout: PicksOptionsArg,
}

impl<'a, 'py> FromPyObject<'a, 'py> for RouteOptionsArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Self { gating: obj.extract()?, layout: obj.extract()? })
    }
}

/// The gating options of route (see RouteOptionsArg).
#[derive(FromPyObject)]
struct GatingArg {
    #[pyo3(attribute)]
    k: usize,
    #[pyo3(attribute)]
    score: String,
    #[pyo3(attribute)]
    normalize: String,
    #[pyo3(attribute)]
    scale: f64,
    #[pyo3(attribute)]
    num_groups: Option<usize>,
    #[pyo3(attribute)]
    topk_groups: Option<usize>,
}

impl RouteOptionsArg {
    /// The core's options, with `bias` as the selection bias.
    pub(super) fn into_options(self, bias: Option<Vec<f64>>) -> crate::Result<RouteOptions> {
        let g = self.gating;
        let groups = match (g.num_groups, g.topk_groups) {
            (None, None) => None,
            (Some(num_groups), Some(topk_groups)) => Some(GroupLimit { num_groups, topk_groups }),
            (num_groups, topk_groups) => {
                return Err(crate::Error::Argument {
                    arg: "num_groups",
                    got: format!("num_groups={num_groups:?}, topk_groups={topk_groups:?}"),
                    expected: "both num_groups and topk_groups, or neither".into(),
                })
            }
        };
        let (score, normalize) = (ScoreFunction::parse(&g.score)?, Normalize::parse(&g.normalize)?);
        let layout = self.layout.into_options()?;
        Ok(RouteOptions {
            top_k: g.k,
            score,
            normalize,
            scale: g.scale,
            bias,
            groups,
            capacity: layout.capacity,
            priority: layout.priority,
            pad_to: layout.pad_to,
        })
    }
}

/// plan_from_topk's layout options (route's capacity, priority and pad_to) as the Python front
/// passes them (`moeroute.options.PicksOptions`, or a RouteOptions), read by attribute name.
#[derive(FromPyObject)]
pub(super) struct PicksOptionsArg {
    #[pyo3(attribute)]
    capacity: Option<usize>,
    #[pyo3(attribute)]
    capacity_factor: Option<f64>,
    #[pyo3(attribute)]
    min_capacity: usize,
    #[pyo3(attribute)]
    capacity_multiple: usize,
    #[pyo3(attribute)]
    priority: String,
    #[pyo3(attribute)]
    pad_to: usize,
}

impl PicksOptionsArg {
    pub(super) fn into_options(self) -> crate::Result<PicksOptions> {
        Ok(PicksOptions {
            capacity: CapacityRequest {
                capacity: self.capacity,
                capacity_factor: self.capacity_factor,
                min_capacity: self.min_capacity,
                capacity_multiple: self.capacity_multiple,
            },
            priority: Priority::parse(&self.priority)?,
            pad_to: self.pad_to,
        })
    }
}

/// plan_from_topk(expert_ids, weights, dtype, num_experts, options) -> the plan as a tuple (see
/// `plan_tuple`): expert_ids an int64 [T, k] array, weights a [T, k] array of `dtype`.
#[pyfunction]
fn plan_from_topk<'py>(
    py: Python<'py>,
    expert_ids: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    dtype_name: &str,
    num_experts: usize,
    options: PicksOptionsArg,
) -> PyResult<Bound<'py, PyTuple>> {
    let options = options.into_options()?;
    let ids = input::<i64>(expert_ids, "expert_ids")?;
    expect_shape("expert_ids", ids.shape(), &[None, None])?;
    let (t, k) = (ids.shape()[0], ids.shape()[1]);
    // A private copy (see index_snapshot): the kernel maps these values to experts once.
    let ids = index_snapshot(&ids, "expert_ids")?;
    with_activation!(DType::parse_arg(dtype_name, "weights")?, A => {
        let weights = input::<<A as Stored>::Storage>(weights, "weights")?;
        expect_shape("weights", weights.shape(), &[Some(t), Some(k)])?;
        let values = A::view(slice(&weights, "weights")?);
        let plan = run_task_kernel(py, t * k, || cpu::given_picks::plan_from_picks(&ids, values, t, k, num_experts, &options))?;
        plan_tuple(py, plan)
    })
}

/// plan_from_topk_layout(num_tokens, top_k, num_experts, options) -> (capacity or None, num_rows):
/// the static shape of plan_from_topk's plan, after checking its options.
#[pyfunction]
fn plan_from_topk_layout(num_tokens: usize, top_k: usize, num_experts: usize, options: PicksOptionsArg) -> PyResult<(Option<usize>, usize)> {
    let options = options.into_options()?;
    let (layout, rows) = core_routing::capacity::picks_layout(&options.capacity, options.pad_to, num_tokens, top_k, num_experts)?;
    Ok((layout.capacity(), rows))
}

/// route(logits, dtype, options, bias=None) -> the plan as a tuple (see `plan_tuple`); bias is a
/// float64 array of one value per expert.
#[pyfunction]
#[pyo3(signature = (logits, dtype_name, options, bias=None))]
fn route<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    dtype_name: &str,
    options: RouteOptionsArg,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let bias = match bias {
        Some(bias) => {
            let bias = input::<f64>(bias, "bias")?;
            expect_shape("bias", bias.shape(), &[None])?;
            Some(slice(&bias, "bias")?.to_vec())
        }
        None => None,
    };
    let options = options.into_options(bias)?;
    with_activation!(DType::parse_arg(dtype_name, "logits")?, A => {
        let logits = input::<<A as Stored>::Storage>(logits, "logits")?;
        let (t, e) = logits_shape(logits.shape())?;
        let values = A::view(slice(&logits, "logits")?);
        let plan = run_task_kernel(py, t * e, || cpu::route::route(values, t, e, &options))?;
        plan_tuple(py, plan)
    })
}

/// expert_choice(logits, dtype, capacity, capacity_factor) -> the plan as a tuple (see `plan_tuple`).
#[pyfunction]
fn expert_choice<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    dtype_name: &str,
    capacity: Option<usize>,
    capacity_factor: f64,
) -> PyResult<Bound<'py, PyTuple>> {
    with_activation!(DType::parse_arg(dtype_name, "logits")?, A => {
        let logits = input::<<A as Stored>::Storage>(logits, "logits")?;
        let (t, e) = logits_shape(logits.shape())?;
        let values = A::view(slice(&logits, "logits")?);
        let plan = run_task_kernel(py, t * e, || cpu::expert_choice::expert_choice(values, t, e, capacity, capacity_factor))?;
        plan_tuple(py, plan)
    })
}

/// route_backward(grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale)
/// -> grad_logits in the dtype of probs (float32 or float64); grad_probs may be None.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn route_backward<'py>(
    py: Python<'py>,
    grad_weights: &Bound<'py, PyAny>,
    grad_probs: Option<&Bound<'py, PyAny>>,
    probs: &Bound<'py, PyAny>,
    expert_ids: &Bound<'py, PyAny>,
    dest: &Bound<'py, PyAny>,
    score: &str,
    normalize: &str,
    scale: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let (score, normalize) = (ScoreFunction::parse(score)?, Normalize::parse(normalize)?);
    with_accum!(accum_dtype(probs, "plan.probs")?, F => {
        let probs = input::<F>(probs, "plan.probs")?;
        expect_shape("plan.probs", probs.shape(), &[None, None])?;
        let (t, e) = (probs.shape()[0], probs.shape()[1]);
        let expert_ids = input::<i32>(expert_ids, "plan.expert_ids")?;
        expect_shape("plan.expert_ids", expert_ids.shape(), &[Some(t), None])?;
        let s = expert_ids.shape()[1];
        let dest = input::<i32>(dest, "plan.dest")?;
        expect_shape("plan.dest", dest.shape(), &[Some(t), Some(s)])?;
        let grad_weights = input::<F>(grad_weights, "grad_weights")?;
        expect_shape("grad_weights", grad_weights.shape(), &[Some(t), Some(s)])?;
        // Private copies: the kernel checks expert_ids and indexes with them (see index_snapshot).
        let (expert_ids, dest) = (index_snapshot(&expert_ids, "plan.expert_ids")?, index_snapshot(&dest, "plan.dest")?);
        let graph = WeightsGraph {
            num_tokens: t,
            num_experts: e,
            slots: s,
            expert_ids: &expert_ids,
            dest: &dest,
            probs: slice(&probs, "plan.probs")?,
            score,
            normalize,
            scale,
        };
        let grad_w = slice(&grad_weights, "grad_weights")?;
        let grad_probs = grad_probs.map(|g| input::<F>(g, "grad_probs")).transpose()?;
        if let Some(g) = &grad_probs {
            expect_shape("grad_probs", g.shape(), &[Some(t), Some(e)])?;
        }
        let grad_probs = grad_probs.as_ref().map(|g| slice(g, "grad_probs")).transpose()?;
        let out = output::<F>(py, &[t, e])?;
        let mut guard = out.readwrite();
        let grad_logits = output_slice(&mut guard)?;
        run_task_kernel(py, graph.num_tokens * graph.num_experts, || cpu::route_backward::route_backward(&graph, grad_w, grad_probs, grad_logits))?;
        drop(guard);
        Ok(out.into_any())
    })
}

/// validate_plan(expert_ids, dest, src, expert_offsets, tokens_per_expert, assigned_per_expert,
/// capacity): raises PlanError / ShapeError for an inconsistent plan.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn validate_plan<'py>(
    py: Python<'py>,
    expert_ids: &Bound<'py, PyAny>,
    dest: &Bound<'py, PyAny>,
    src: &Bound<'py, PyAny>,
    expert_offsets: &Bound<'py, PyAny>,
    tokens_per_expert: &Bound<'py, PyAny>,
    assigned_per_expert: &Bound<'py, PyAny>,
    capacity: Option<usize>,
) -> PyResult<()> {
    let expert_ids = input::<i32>(expert_ids, "plan.expert_ids")?;
    expect_shape("plan.expert_ids", expert_ids.shape(), &[None, None])?;
    let (t, s) = (expert_ids.shape()[0], expert_ids.shape()[1]);
    let dest = input::<i32>(dest, "plan.dest")?;
    expect_shape("plan.dest", dest.shape(), &[Some(t), Some(s)])?;
    let src = input::<i32>(src, "plan.src")?;
    expect_shape("plan.src", src.shape(), &[None])?;
    let tokens_per_expert = input::<i64>(tokens_per_expert, "plan.tokens_per_expert")?;
    expect_shape("plan.tokens_per_expert", tokens_per_expert.shape(), &[None])?;
    let e = tokens_per_expert.shape()[0];
    let assigned = input::<i64>(assigned_per_expert, "plan.assigned_per_expert")?;
    expect_shape("plan.assigned_per_expert", assigned.shape(), &[Some(e)])?;
    let offsets = input::<i64>(expert_offsets, "plan.expert_offsets")?;
    expect_shape("plan.expert_offsets", offsets.shape(), &[Some(e + 1)])?;
    // Private copies (see index_snapshot): the checks index with these values.
    let num_rows = src.shape()[0];
    let (expert_ids, dest, src) = (
        index_snapshot(&expert_ids, "plan.expert_ids")?,
        index_snapshot(&dest, "plan.dest")?,
        index_snapshot(&src, "plan.src")?,
    );
    let (offsets, tokens_per_expert, assigned) = (
        index_snapshot(&offsets, "plan.expert_offsets")?,
        index_snapshot(&tokens_per_expert, "plan.tokens_per_expert")?,
        index_snapshot(&assigned, "plan.assigned_per_expert")?,
    );
    let arrays = PlanArrays {
        num_tokens: t,
        num_experts: e,
        slots: s,
        num_rows,
        expert_ids: &expert_ids,
        dest: &dest,
        src: &src,
        expert_offsets: &offsets,
        tokens_per_expert: &tokens_per_expert,
        assigned_per_expert: &assigned,
        capacity,
    };
    run_kernel(py, t * s + arrays.num_rows, || validate(&arrays))
}

/// route_layout(num_tokens, num_experts, options) -> (capacity or None, num_rows): the static shape
/// of a route's plan, after the checks route makes of its options.
#[pyfunction]
fn route_layout(num_tokens: usize, num_experts: usize, options: RouteOptionsArg) -> PyResult<(Option<usize>, usize)> {
    let (layout, rows) = core_routing::route_layout(&options.into_options(None)?, num_tokens, num_experts)?;
    Ok((layout.capacity(), rows))
}

/// expert_choice_layout(num_tokens, num_experts, capacity, capacity_factor) -> (capacity,
/// num_rows): the static shape of an expert choice's plan.
#[pyfunction]
fn expert_choice_layout(num_tokens: usize, num_experts: usize, capacity: Option<usize>, capacity_factor: f64) -> PyResult<(usize, usize)> {
    Ok(core_routing::expert_choice_layout(num_tokens, num_experts, capacity, capacity_factor)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PLAN_FIELDS", PyTuple::new(m.py(), PLAN_FIELDS)?)?;
    m.add_function(wrap_pyfunction!(route_layout, m)?)?;
    m.add_function(wrap_pyfunction!(expert_choice_layout, m)?)?;
    m.add_function(wrap_pyfunction!(route, m)?)?;
    m.add_function(wrap_pyfunction!(expert_choice, m)?)?;
    m.add_function(wrap_pyfunction!(plan_from_topk, m)?)?;
    m.add_function(wrap_pyfunction!(plan_from_topk_layout, m)?)?;
    m.add_function(wrap_pyfunction!(route_backward, m)?)?;
    m.add_function(wrap_pyfunction!(validate_plan, m)?)?;
    Ok(())
}
