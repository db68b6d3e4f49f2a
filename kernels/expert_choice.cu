// Expert choice (Zhou et al. 2022): one block per expert takes its C highest-probability tokens
// (ties to the lower token) and writes its slot of every token, its rows and its counts. Keys are
// read from the transposed probabilities probs_t ([E, T], written by the gating kernel).
#include "common.cuh"
#include "select.cuh"

template <typename F>
__device__ void expert_choice(const F* probs, const F* probs_t, int T, int E, int capacity, int* expert_ids, F* weights, int* dest,
                              int* src, i64* offsets, i64* tokens, i64* assigned) {
    const int e = blockIdx.x;
    const int taken_count = min(capacity, T);
    if (threadIdx.x == 0) {
        offsets[e] = (i64)e * capacity;
        tokens[e] = taken_count;
        assigned[e] = taken_count;
        if (e == E - 1) offsets[E] = (i64)E * capacity;
    }
    const F* column = probs_t + (long long)e * T;
    auto key = [&](int t) { return order_key(column[t]); };
    auto emit = [&](int t, bool taken, int rank) {
        const long long slot = (long long)t * E + e;
        expert_ids[slot] = taken ? e : -1;
        weights[slot] = taken ? column[t] : (F)0;
        const int row = e * capacity + rank;
        dest[slot] = taken ? row : -1;
        if (taken) src[row] = t;
    };
    select_largest(T, taken_count, (int)sizeof(F) * 8, key, emit);
}

extern "C" __global__ void expert_choice_f32(const float* probs, const float* probs_t, int T, int E, int capacity, int* expert_ids,
                                             float* weights, int* dest, int* src, i64* offsets, i64* tokens,
                                             i64* assigned) {
    expert_choice<float>(probs, probs_t, T, E, capacity, expert_ids, weights, dest, src, offsets, tokens, assigned);
}
extern "C" __global__ void expert_choice_f64(const double* probs, const double* probs_t, int T, int E, int capacity, int* expert_ids,
                                             double* weights, int* dest, int* src, i64* offsets, i64* tokens,
                                             i64* assigned) {
    expert_choice<double>(probs, probs_t, T, E, capacity, expert_ids, weights, dest, src, offsets, tokens, assigned);
}
