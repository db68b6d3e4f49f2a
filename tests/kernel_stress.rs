//! Stress test of the CPU kernels on random and hostile plans (out-of-range, duplicated and swapped
//! indices), and of index snapshots taken while other threads write the indices: every call must
//! return a correct result or a PlanError, never panic or touch memory out of bounds. `.ci/asan.sh`
//! runs it under AddressSanitizer with more rounds (MOEROUTE_STRESS_ROUNDS).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use half::bf16;
use moeroute::cpu::indices::snapshot;
use moeroute::cpu::{combine, combine_backward, expert_choice, noisy_load, permute, route, route_backward};
use moeroute::routing::options::CapacityRequest;
use moeroute::routing::validate::{validate_plan, PlanArrays};
use moeroute::routing::{GroupLimit, Normalize, Priority, RouteOptions, RoutingPlan, ScoreFunction};
use moeroute::Error;

/// Rounds of each test: MOEROUTE_STRESS_ROUNDS, else `default`.
fn rounds(default: usize) -> usize {
    std::env::var("MOEROUTE_STRESS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n) (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
}

/// A random route's plan: random sizes and options (capacity, padding, priority, groups).
fn random_plan(rng: &mut Rng) -> RoutingPlan<f32> {
    loop {
        let (t, e) = (rng.below(40), 1 + rng.below(8));
        let mut options = RouteOptions::new(1 + rng.below(e.min(3)));
        options.score = if rng.below(2) == 0 { ScoreFunction::Softmax } else { ScoreFunction::Sigmoid };
        options.normalize = [Normalize::None, Normalize::TopK, Normalize::Kept][rng.below(3)];
        options.priority = [Priority::Slot, Priority::Token, Priority::Score][rng.below(3)];
        options.capacity = match rng.below(3) {
            0 => CapacityRequest::default(),
            1 => CapacityRequest { capacity: Some(rng.below(6)), ..Default::default() },
            _ => CapacityRequest { capacity_factor: Some(0.25 + rng.below(8) as f64 * 0.25), ..Default::default() },
        };
        options.pad_to = 1 + rng.below(4);
        if e % 2 == 0 && rng.below(3) == 0 {
            options.groups = Some(GroupLimit { num_groups: 2, topk_groups: 1 });
        }
        let logits = rng.values(t * e);
        if let Ok(plan) = route::route(&logits, t, e, &options) {
            return plan;
        }
    }
}

/// Makes 0 to 3 hostile edits to the plan's index arrays; returns how many it made.
fn corrupt(rng: &mut Rng, plan: &mut RoutingPlan<f32>) -> usize {
    let edits = rng.below(4);
    for _ in 0..edits {
        let (values, limit) = match rng.below(4) {
            0 | 1 => (&mut plan.dest, plan.num_rows),
            2 => (&mut plan.src, plan.num_tokens),
            _ => (&mut plan.expert_ids, plan.num_experts),
        };
        let n = values.len();
        if n == 0 {
            continue;
        }
        let i = rng.below(n);
        values[i] = match rng.below(5) {
            0 => rng.below(limit + 1) as i32 - 1,
            1 => values[rng.below(n)],
            2 => [limit as i32, limit as i32 + 5, -2, i32::MIN, i32::MAX, 1 << 30][rng.below(6)],
            3 => {
                let j = rng.below(n);
                values.swap(i, j);
                values[i]
            }
            _ => -1,
        };
    }
    edits
}

fn is_plan_error<T>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Plan { .. }))
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
}

/// Runs every data-moving kernel and plan validation on `plan` with activations of width `h`:
/// each returns a PlanError or a result (compared with plain loops when `verify`). Returns whether
/// validation accepted the plan.
fn check_kernels(rng: &mut Rng, plan: &RoutingPlan<f32>, h: usize, verify: bool) -> bool {
    let (t, s, r, e) = (plan.num_tokens, plan.slots, plan.num_rows, plan.num_experts);
    let (dest, src) = (&plan.dest, &plan.src);
    let valid = validate_plan(&PlanArrays {
        num_tokens: t,
        num_experts: e,
        slots: s,
        num_rows: r,
        expert_ids: &plan.expert_ids,
        dest,
        src,
        expert_offsets: &plan.expert_offsets,
        tokens_per_expert: &plan.tokens_per_expert,
        assigned_per_expert: &plan.assigned_per_expert,
        capacity: plan.capacity,
    });
    assert!(valid.is_ok() || is_plan_error(&valid), "validate_plan: {valid:?}");
    let valid = valid.is_ok();

    // permute
    let x = rng.values(t * h);
    let mut xp = vec![7.0f32; r * h];
    let got = permute::permute(&x, t, h, src, 0.0, &mut xp);
    assert!(got.is_ok() || is_plan_error(&got), "permute: {got:?}");
    assert!(got.is_ok() || !valid, "permute rejected a valid plan: {got:?}");
    if got.is_ok() && verify {
        for (row, &tok) in src.iter().enumerate() {
            let out = &xp[row * h..(row + 1) * h];
            if tok < 0 {
                assert!(out.iter().all(|&v| v == 0.0));
            } else {
                assert_eq!(out, &x[tok as usize * h..(tok as usize + 1) * h]);
            }
        }
    }

    // combine and permute_backward (one or two sources of rows, with and without weights)
    let (yp, yp2, w) = (rng.values(r * h), rng.values(r * h), rng.values(t * s));
    for (sources, weights) in [(vec![&yp[..]], Some(&w[..])), (vec![&yp[..]], None), (vec![&yp[..], &yp2[..]], None)] {
        let mut y = vec![7.0f32; t * h];
        let got = combine::combine(&sources, r, h, dest, s, weights, &mut y);
        assert!(got.is_ok() || is_plan_error(&got), "combine: {got:?}");
        assert!(got.is_ok() || !valid, "combine rejected a valid plan: {got:?}");
        if got.is_ok() && verify {
            for tok in 0..t {
                for c in 0..h {
                    let mut want = 0.0f32;
                    for slot in 0..s {
                        let d = dest[tok * s + slot];
                        if d >= 0 {
                            let v: f32 = sources.iter().map(|rows| rows[d as usize * h + c]).sum();
                            want += weights.map_or(1.0, |w| w[tok * s + slot]) * v;
                        }
                    }
                    assert!(close(y[tok * h + c], want), "combine: token {tok} column {c}");
                }
            }
        }
    }
    // bf16 rows: another instantiation of the same kernel
    let yp16: Vec<bf16> = yp.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut y16 = vec![bf16::ZERO; t * h];
    let got = combine::combine(&[&yp16[..]], r, h, dest, s, Some(&w), &mut y16);
    assert!(got.is_ok() || is_plan_error(&got), "combine bf16: {got:?}");

    // combine_backward
    let grad_y = rng.values(t * h);
    let (mut grad_yp, mut grad_w) = (vec![7.0f32; r * h], vec![7.0f32; t * s]);
    let got = combine_backward::combine_backward(&grad_y, &yp, t, h, dest, src, s, &w, &mut grad_yp, &mut grad_w);
    assert!(got.is_ok() || is_plan_error(&got), "combine_backward: {got:?}");
    assert!(got.is_ok() || !valid, "combine_backward rejected a valid plan: {got:?}");
    if got.is_ok() && verify {
        for (row, &tok) in src.iter().enumerate() {
            let out = &grad_yp[row * h..(row + 1) * h];
            if tok < 0 {
                assert!(out.iter().all(|&v| v == 0.0), "padding row {row}");
                continue;
            }
            let i = (tok as usize * s..(tok as usize + 1) * s).find(|&i| dest[i] == row as i32).expect("one-to-one");
            let g = &grad_y[tok as usize * h..(tok as usize + 1) * h];
            assert!(out.iter().zip(g).all(|(&v, &gv)| close(v, w[i] * gv)), "grad_yp row {row}");
        }
        for (i, &d) in dest.iter().enumerate() {
            let tok = i / s.max(1);
            let want: f32 = if d < 0 { 0.0 } else { (0..h).map(|c| grad_y[tok * h + c] * yp[d as usize * h + c]).sum() };
            assert!(close(grad_w[i], want) || (grad_w[i] - want).abs() < 1e-4, "grad_w {i}: {} vs {want}", grad_w[i]);
        }
    }

    // route_backward
    let graph = route_backward::WeightsGraph {
        num_tokens: t,
        num_experts: e,
        slots: s,
        expert_ids: &plan.expert_ids,
        dest,
        probs: &plan.probs,
        score: plan.score.expect("a routed plan has a score"),
        normalize: plan.normalize,
        scale: plan.scale,
    };
    let mut grad_logits = vec![7.0f32; t * e];
    let got = route_backward::route_backward(&graph, &w, None, &mut grad_logits);
    assert!(got.is_ok() || is_plan_error(&got), "route_backward: {got:?}");
    assert!(got.is_ok() || !valid, "route_backward rejected a valid plan: {got:?}");
    valid
}

#[test]
fn kernels_give_results_or_plan_errors_on_hostile_plans() {
    let mut rng = Rng(1);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..rounds(400) {
        let mut plan = random_plan(&mut rng);
        let edits = corrupt(&mut rng, &mut plan);
        // Widths around the SIMD lane counts, and now and then a wide one (parallel tasks).
        let h = [0, 1, 3, 8, 17, 64, 300][rng.below(7)];
        let valid = check_kernels(&mut rng, &plan, h, true);
        assert!(valid || edits > 0, "round {round}: an untouched plan failed validation");
        if valid {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(accepted > 0 && rejected > 0, "accepted {accepted}, rejected {rejected}");
}

#[test]
fn route_and_expert_choice_give_plans_or_errors_on_hostile_logits() {
    let mut rng = Rng(2);
    for _ in 0..rounds(400) {
        let (t, e) = (rng.below(30), 1 + rng.below(9));
        let mut logits = rng.values(t * e);
        if !logits.is_empty() && rng.below(4) == 0 {
            let i = rng.below(logits.len());
            logits[i] = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, f32::MAX][rng.below(4)];
        }
        let mut options = RouteOptions::new(rng.below(e + 2));
        options.capacity = CapacityRequest { capacity: if rng.below(2) == 0 { Some(rng.below(5)) } else { None }, ..Default::default() };
        if let Ok(plan) = route::route(&logits, t, e, &options) {
            assert_eq!(plan.dest.len(), t * plan.slots);
            check_kernels(&mut rng, &plan, 5, true);
        }
        if let Ok(plan) = expert_choice::expert_choice(&logits, t, e, None, 0.5 + rng.below(4) as f64 * 0.5) {
            check_kernels(&mut rng, &plan, 5, true);
        }
        let clean: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let noisy: Vec<f64> = rng.values(t * e).into_iter().map(|v| v as f64).collect();
        let std: Vec<f64> = (0..t * e).map(|_| if rng.below(20) == 0 { 0.0 } else { 1.0 }).collect();
        let mut out = vec![0.0f64; t * e];
        let _ = noisy_load::noisy_load_probs(&clean, &noisy, &std, e, 1 + rng.below(e), &mut out);
    }
}

#[test]
fn hostile_plan_with_streaming_stores() {
    // Outputs of 16 MiB and more are written with streaming stores: a duplicated and an
    // out-of-range row must be caught there too.
    let mut rng = Rng(3);
    let (t, e, h) = (2048, 8, 1024);
    let mut options = RouteOptions::new(2);
    options.capacity = CapacityRequest { capacity_factor: Some(1.0), ..Default::default() };
    let logits = rng.values(t * e);
    let plan = route::route(&logits, t, e, &options).unwrap();
    // (The results of a valid plan with streaming stores are checked by the kernels' unit tests.)
    assert!(check_kernels(&mut rng, &plan, h, false));
    let kept: Vec<usize> = (0..plan.dest.len()).filter(|&i| plan.dest[i] >= 0).collect();
    let mut dup = plan.clone();
    dup.dest[kept[kept.len() - 1]] = dup.dest[kept[0]];
    assert!(!check_kernels(&mut rng, &dup, h, false));
    let mut far = plan.clone();
    far.dest[kept[kept.len() / 2]] = i32::MAX;
    far.src[far.num_rows - 1] = 1 << 30;
    assert!(!check_kernels(&mut rng, &far, h, false));
}

#[test]
fn snapshots_taken_while_other_threads_write_the_indices() {
    // What the bindings do with a tensor another Python thread is writing: copy it (relaxed
    // atomic loads) and run the kernels on the copy. Writers here use atomic stores.
    let mut rng = Rng(4);
    let (t, e, h) = (256, 8, 16);
    let mut options = RouteOptions::new(2);
    options.capacity = CapacityRequest { capacity_factor: Some(1.0), ..Default::default() };
    let plan = route::route(&rng.values(t * e), t, e, &options).unwrap();
    let shared = |v: &[i32]| Arc::new(v.iter().map(|&x| AtomicI32::new(x)).collect::<Vec<_>>());
    let (dest, src, ids) = (shared(&plan.dest), shared(&plan.src), shared(&plan.expert_ids));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (dest, src, ids, stop) = (dest.clone(), src.clone(), ids.clone(), stop.clone());
            let (pristine_dest, pristine_src, pristine_ids) = (plan.dest.clone(), plan.src.clone(), plan.expert_ids.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(100 + w);
                while !stop.load(Ordering::Relaxed) {
                    let (array, pristine, limit) = match rng.below(3) {
                        0 => (&dest, &pristine_dest, pristine_src.len()),
                        1 => (&src, &pristine_src, 256),
                        _ => (&ids, &pristine_ids, 8),
                    };
                    let i = rng.below(array.len());
                    let value = match rng.below(5) {
                        0 => rng.below(limit + 1) as i32 - 1,
                        1 => array[rng.below(array.len())].load(Ordering::Relaxed),
                        2 => [i32::MAX, i32::MIN, -2, limit as i32][rng.below(4)],
                        _ => pristine[i],
                    };
                    array[i].store(value, Ordering::Relaxed);
                    if rng.below(50) == 0 {
                        for (a, &p) in array.iter().zip(pristine.iter()) {
                            a.store(p, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..rounds(400) / 4 {
        let mut copy = plan.clone();
        // SAFETY: AtomicI32 has the layout of i32, and the vectors outlive the calls.
        unsafe {
            copy.dest = snapshot(dest.as_ptr().cast::<i32>(), dest.len());
            copy.src = snapshot(src.as_ptr().cast::<i32>(), src.len());
            copy.expert_ids = snapshot(ids.as_ptr().cast::<i32>(), ids.len());
        }
        if check_kernels(&mut rng, &copy, h, true) {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(rejected > 0, "accepted {accepted}, rejected {rejected}");
}
