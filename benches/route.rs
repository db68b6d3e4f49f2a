//! Criterion bench of token-choice routing (gating + plan) and expert choice on the CPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moeroute::cpu::{expert_choice::expert_choice, route::route};
use moeroute::routing::RouteOptions;

fn random_logits(n: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        })
        .collect()
}

fn bench_route(c: &mut Criterion) {
    let (tokens, experts) = (16384, 64);
    let logits = random_logits(tokens * experts);
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Bytes((logits.len() * 4) as u64));
    group.bench_function("top2_softmax_dropless", |b| {
        b.iter(|| route(&logits, tokens, experts, &RouteOptions::new(2)).unwrap())
    });
    group.bench_function("expert_choice_cf1", |b| {
        b.iter(|| expert_choice(&logits, tokens, experts, None, 1.0).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
