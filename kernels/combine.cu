// Combine and permute's backward pass: y[t] = Σ_s w[t,s] · rows[dest[t,s]] in slot order,
// accumulated in f32 (f64 for f64), with V elements per thread; one block per output row. Permute's
// backward pass is the same sum with null weights (weight 1).
#include "common.cuh"

// y[t] for one token per block; weights null means weight 1. Rows outside [0, R) are skipped.
template <typename T, int V>
__device__ void combine(const T* rows, const int* dest, const typename Elem<T>::Acc* weights, T* y, int S, int H,
                        int R) {
    typedef typename Elem<T>::Acc F;
    typedef Pack<T, V> P;
    const long long t = blockIdx.x;
    const int* d = dest + t * S;
    const int packs = H / V;
    for (int j = threadIdx.x; j < packs; j += blockDim.x) {
        F acc[V];
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = (F)0;
        for (int s = 0; s < S; ++s) {
            const int row = d[s];
            if (row < 0 || row >= R) continue;
            const F w = weights ? weights[t * S + s] : (F)1;
            const P in = reinterpret_cast<const P*>(rows + (long long)row * H)[j];
#pragma unroll
            for (int v = 0; v < V; ++v) acc[v] = acc[v] + w * Elem<T>::load(in.v[v]);
        }
        P out;
#pragma unroll
        for (int v = 0; v < V; ++v) out.v[v] = Elem<T>::store(acc[v]);
        reinterpret_cast<P*>(y + t * H)[j] = out;
    }
}

#define COMBINE(name, T, V)                                                                            \
    extern "C" __global__ void name(const T* rows, const int* dest, const Elem<T>::Acc* weights, T* y, \
                                    int S, int H, int R) {                                             \
        combine<T, V>(rows, dest, weights, y, S, H, R);                                                \
    }
COMBINE(combine_f32_v1, float, 1)
COMBINE(combine_f32_v4, float, 4)
COMBINE(combine_f64_v1, double, 1)
COMBINE(combine_f64_v2, double, 2)
COMBINE(combine_f16_v1, f16, 1)
COMBINE(combine_f16_v8, f16, 8)
COMBINE(combine_bf16_v1, bf16, 1)
COMBINE(combine_bf16_v8, bf16, 8)
