// Expert choice (Zhou et al. 2022): one block per expert takes its C highest-probability tokens
// (ties to the lower token) and writes its slot of every token, its rows and its counts.
#include "common.cuh"
#include "select.cuh"

template <typename F>
__device__ void expert_choice(const F* probs, int T, int E, int capacity, int* expert_ids, F* weights, int* dest,
                              int* src, i64* offsets, i64* tokens, i64* assigned) {
    const int e = blockIdx.x;
    const int taken_count = min(capacity, T);
    if (threadIdx.x == 0) {
        offsets[e] = (i64)e * capacity;
        tokens[e] = taken_count;
        assigned[e] = taken_count;
        if (e == E - 1) offsets[E] = (i64)E * capacity;
    }
    auto key = [&](int t) { return order_key(probs[(long long)t * E + e]); };
    auto emit = [&](int t, bool taken, int rank) {
        const long long slot = (long long)t * E + e;
        expert_ids[slot] = taken ? e : -1;
        weights[slot] = taken ? probs[slot] : (F)0;
        const int row = e * capacity + rank;
        dest[slot] = taken ? row : -1;
        if (taken) src[row] = t;
    };
    select_largest(T, taken_count, (int)sizeof(F) * 8, key, emit);
}

extern "C" __global__ void expert_choice_f32(const float* probs, int T, int E, int capacity, int* expert_ids,
                                             float* weights, int* dest, int* src, i64* offsets, i64* tokens,
                                             i64* assigned) {
    expert_choice<float>(probs, T, E, capacity, expert_ids, weights, dest, src, offsets, tokens, assigned);
}
extern "C" __global__ void expert_choice_f64(const double* probs, int T, int E, int capacity, int* expert_ids,
                                             double* weights, int* dest, int* src, i64* offsets, i64* tokens,
                                             i64* assigned) {
    expert_choice<double>(probs, T, E, capacity, expert_ids, weights, dest, src, offsets, tokens, assigned);
}
