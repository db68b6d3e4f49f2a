//! Criterion bench of permute and combine on the CPU, against a plain copy of the same bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moeroute::cpu::{combine::combine, permute::permute, route::route};
use moeroute::routing::RouteOptions;

fn bench_permute_combine(c: &mut Criterion) {
    let (tokens, hidden, experts, k) = (4096, 1024, 64, 2);
    let logits: Vec<f32> = (0..tokens * experts).map(|i| ((i * 7919) % 1000) as f32 / 250.0).collect();
    let plan = route(&logits, tokens, experts, &RouteOptions::new(k)).unwrap();
    let x: Vec<f32> = (0..tokens * hidden).map(|i| (i % 97) as f32).collect();
    let rows = plan.num_rows;
    let mut xp = vec![0.0f32; rows * hidden];
    let source = vec![1.0f32; rows * hidden];
    let mut y = vec![0.0f32; tokens * hidden];

    let mut group = c.benchmark_group("permute_combine");
    group.throughput(Throughput::Bytes((rows * hidden * 4) as u64));
    group.bench_function("copy_floor", |b| b.iter(|| xp.copy_from_slice(&source)));
    group.bench_function("permute", |b| b.iter(|| permute(&x, tokens, hidden, &plan.src, 0.0, &mut xp).unwrap()));
    group.bench_function("combine", |b| {
        b.iter(|| combine(&[&xp], rows, hidden, &plan.dest, k, Some(&plan.weights), &mut y).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_permute_combine);
criterion_main!(benches);
