// Combine's backward pass: grad_yp[r] = w · grad_y[src[r]] and grad_w = ⟨grad_y, yp[r]⟩, one
// block per row.
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
