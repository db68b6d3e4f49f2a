// Route's backward pass: the gradient of the weights and probs w.r.t. the logits through the
// normalization and the score function, one thread per token, as src/cpu/route_backward.rs.
#include "common.cuh"

// normalize: 0 none, 1 topk, 2 kept. grad_probs may be null. out: [T, E]. One warp of 32 tokens
// per block; each token's gradient row is built in shared memory (stride E + 1: no bank
// conflicts) when 32 rows fit, else in `out` itself, and stored coalesced.
template <typename F>
__device__ void route_backward(const F* grad_w, const F* grad_probs, const F* probs, const int* ids,
                               const int* dest, int T, int E, int S, int sigmoid, int normalize, F scale, F* out,
                               int in_shared) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int lane = threadIdx.x;
    const long long t0 = (long long)blockIdx.x * 32;
    const int n_rows = (int)min(32ll, (long long)T - t0);
    const long long count = (long long)n_rows * E;
    F* rows = in_shared ? reinterpret_cast<F*>(smem_raw) : out + t0 * E;
    const int stride = in_shared ? E + 1 : E;
    for (long long i = lane; i < count; i += 32)
        rows[(i / E) * stride + i % E] = grad_probs ? grad_probs[t0 * E + i] : (F)0;
    __syncwarp();
    if (lane < n_rows) {
        const long long t = t0 + lane;
        const F* p = probs + t * E;
        const int* id = ids + t * S;
        const int* d = dest + t * S;
        const F* gw = grad_w + t * S;
        F* g = rows + (long long)lane * stride;
        auto valid = [&](int s) { return id[s] >= 0 && id[s] < E; };
        auto in_denominator = [&](int s) {
            return normalize == 1 ? valid(s) : (normalize == 2 ? d[s] >= 0 && valid(s) : false);
        };
        F z = (F)0;
        for (int s = 0; s < S; ++s)
            if (in_denominator(s)) z += p[id[s]];
        const bool normalized = normalize != 0 && z != (F)0;
        if (!normalized) z = (F)1;
        F weighted = (F)0;
        for (int s = 0; s < S; ++s) {
            if (valid(s) && d[s] >= 0) {
                g[id[s]] += scale * gw[s] / z;
                weighted += gw[s] * p[id[s]];
            }
        }
        if (normalized) {
            const F shared = scale * weighted / (z * z);
            for (int s = 0; s < S; ++s)
                if (in_denominator(s)) g[id[s]] -= shared;
        }
        if (sigmoid) {
            for (int j = 0; j < E; ++j) g[j] = g[j] * p[j] * ((F)1 - p[j]);
        } else {
            F dot = (F)0;
            for (int j = 0; j < E; ++j) dot += g[j] * p[j];
            for (int j = 0; j < E; ++j) g[j] = p[j] * (g[j] - dot);
        }
    }
    __syncwarp();
    if (in_shared) {
        for (long long i = lane; i < count; i += 32) out[t0 * E + i] = rows[(i / E) * stride + i % E];
    }
}

extern "C" __global__ void route_backward_f32(const float* grad_w, const float* grad_probs, const float* probs,
                                              const int* ids, const int* dest, int T, int E, int S, int sigmoid,
                                              int normalize, float scale, float* out, int in_shared) {
    route_backward<float>(grad_w, grad_probs, probs, ids, dest, T, E, S, sigmoid, normalize, scale, out, in_shared);
}
extern "C" __global__ void route_backward_f64(const double* grad_w, const double* grad_probs, const double* probs,
                                              const int* ids, const int* dest, int T, int E, int S, int sigmoid,
                                              int normalize, double scale, double* out, int in_shared) {
    route_backward<double>(grad_w, grad_probs, probs, ids, dest, T, E, S, sigmoid, normalize, scale, out,
                           in_shared);
}
