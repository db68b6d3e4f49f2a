// Backward passes: combine's (grad_yp[r] = w · grad_y[src[r]], grad_w = ⟨grad_y, yp[r]⟩, one block
// per row) and route's (gradient of the weights and probs w.r.t. the logits through the
// normalization and the score function, one thread per token, as src/cpu/route_backward.rs).
#include "common.cuh"

template <typename F>
__device__ F block_sum(F v) {
    __shared__ F partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, o);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    F total = (F)0;
    if (threadIdx.x == 0) {
        for (int w = 0; w < warps; ++w) total += partial[w];
    }
    return total;
}

// grad_w must be zeroed by the caller (dropped slots keep 0).
template <typename T, int V>
__device__ void combine_backward(const T* grad_y, const T* yp, const int* dest, const int* src,
                                 const typename Elem<T>::Acc* weights, T* grad_yp, typename Elem<T>::Acc* grad_w,
                                 int num_tokens, int S, int H) {
    typedef typename Elem<T>::Acc F;
    typedef Pack<T, V> P;
    const long long r = blockIdx.x;
    const int t = src[r];
    int slot = -1;
    if (t >= 0 && t < num_tokens) {
        for (int s = 0; s < S; ++s) {
            if (dest[(long long)t * S + s] == r) {
                slot = s;
                break;
            }
        }
    }
    const int packs = H / V;
    P* out = reinterpret_cast<P*>(grad_yp + r * H);
    if (slot < 0) {
        P zero;
#pragma unroll
        for (int v = 0; v < V; ++v) zero.v[v] = Elem<T>::store((F)0);
        for (int j = threadIdx.x; j < packs; j += blockDim.x) out[j] = zero;
        return;
    }
    const long long ts = (long long)t * S + slot;
    const F w = weights[ts];
    const P* gy = reinterpret_cast<const P*>(grad_y + (long long)t * H);
    const P* row = reinterpret_cast<const P*>(yp + r * H);
    F dot = (F)0;
    for (int j = threadIdx.x; j < packs; j += blockDim.x) {
        const P g = gy[j], y = row[j];
        P o;
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const F gv = Elem<T>::load(g.v[v]);
            o.v[v] = Elem<T>::store(w * gv);
            dot += gv * Elem<T>::load(y.v[v]);
        }
        out[j] = o;
    }
    dot = block_sum(dot);
    if (threadIdx.x == 0) grad_w[ts] = dot;
}

#define COMBINE_BACKWARD(name, T, V)                                                                   \
    extern "C" __global__ void name(const T* grad_y, const T* yp, const int* dest, const int* src,     \
                                    const Elem<T>::Acc* weights, T* grad_yp, Elem<T>::Acc* grad_w,     \
                                    int num_tokens, int S, int H) {                                    \
        combine_backward<T, V>(grad_y, yp, dest, src, weights, grad_yp, grad_w, num_tokens, S, H);     \
    }
COMBINE_BACKWARD(combine_backward_f32_v1, float, 1)
COMBINE_BACKWARD(combine_backward_f32_v4, float, 4)
COMBINE_BACKWARD(combine_backward_f64_v1, double, 1)
COMBINE_BACKWARD(combine_backward_f64_v2, double, 2)
COMBINE_BACKWARD(combine_backward_f16_v1, f16, 1)
COMBINE_BACKWARD(combine_backward_f16_v8, f16, 8)
COMBINE_BACKWARD(combine_backward_bf16_v1, bf16, 1)
COMBINE_BACKWARD(combine_backward_bf16_v8, bf16, 8)

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
