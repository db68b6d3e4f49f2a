// Permute: xp[r] = x[src[r]] (padding rows zero) as row copies of the widest word that fits,
// one block per output row.
#include "common.cuh"

// Rows of `width` words of type W; a source row outside [0, T) is a padding row.
template <typename W>
__device__ void gather_rows(const W* __restrict__ x, W* __restrict__ xp, const int* __restrict__ src, int T, long long width) {
    const long long r = blockIdx.x;
    const int t = src[r];
    W* out = xp + r * width;
    if (t < 0 || t >= T) {
        W zero;
        memset(&zero, 0, sizeof(W));
        for (long long i = threadIdx.x; i < width; i += blockDim.x) out[i] = zero;
        return;
    }
    const W* in = x + (long long)t * width;
    for (long long i = threadIdx.x; i < width; i += blockDim.x) out[i] = in[i];
}

#define GATHER(name, W)                                                                                \
    extern "C" __global__ void name(const W* x, W* xp, const int* src, int T, long long width) {      \
        gather_rows<W>(x, xp, src, T, width);                                                          \
    }
GATHER(gather_rows_b16, uint4)
GATHER(gather_rows_b8, uint2)
GATHER(gather_rows_b4, unsigned int)
GATHER(gather_rows_b2, unsigned short)
