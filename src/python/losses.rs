//! Binding of the noisy top-k load estimator.

use numpy::{PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::arrays::{expect_shape, input, output_slice, slice, output};
use super::errors::run_kernel;
use crate::cpu;
use crate::routing::options::check_top_k;

/// noisy_load_probs(clean, noisy, noise_std, k) -> P, all float64 [T, E] (noise_std broadcast).
#[pyfunction]
fn noisy_load_probs<'py>(
    py: Python<'py>,
    clean: &Bound<'py, PyAny>,
    noisy: &Bound<'py, PyAny>,
    noise_std: &Bound<'py, PyAny>,
    k: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let clean = input::<f64>(clean, "clean_logits")?;
    expect_shape("clean_logits", clean.shape(), &[None, None])?;
    let (t, e) = (clean.shape()[0], clean.shape()[1]);
    let noisy = input::<f64>(noisy, "noisy_logits")?;
    expect_shape("noisy_logits", noisy.shape(), &[Some(t), Some(e)])?;
    let std = input::<f64>(noise_std, "noise_std")?;
    expect_shape("noise_std", std.shape(), &[Some(t), Some(e)])?;
    check_top_k(k, e)?;
    let (clean, noisy, std) = (slice(&clean, "clean_logits")?, slice(&noisy, "noisy_logits")?, slice(&std, "noise_std")?);
    let out = output::<f64>(py, &[t, e])?;
    let mut guard = out.readwrite();
    let probs = output_slice(&mut guard)?;
    run_kernel(py, t * e, || cpu::noisy_load::noisy_load_probs(clean, noisy, std, e, k, probs))?;
    drop(guard);
    Ok(out.into_any())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(noisy_load_probs, m)?)?;
    Ok(())
}
