// Selective scan forward on the CPU: one task per (sample, block of channels), the channels of a block
// scanned side by side in the vector lanes of the variant that runs (scan_block.h). Semantics are those of
// rmeeto_selective_scan_fwd (kernels/rmeeto_kernels.h).
#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "scan_block.h"

namespace rmeeto_cpu
{
namespace
{

template <typename T>
struct ScanArgs
{
    int32_t batch, dim, dstate, seqlen;
    const T *u, *delta, *B, *C, *z;
    const float *A, *D, *deltaBias;
    bool deltaSoftplus, reverse;
    T* out;
};

template <typename T>
void transposeToTimeMajor(const T* x, int32_t dstate, int32_t seqlen, float* xt)
{
    for (int32_t n = 0; n < dstate; ++n)
        for (int32_t t = 0; t < seqlen; ++t)
            xt[static_cast<size_t>(t) * dstate + n] = toFloat(x[static_cast<size_t>(n) * seqlen + t]);
}

// Scans channels d0 .. d0 + variant.lanes - 1 of sample b (lanes past the last channel scan zeros and are
// dropped): gathers them lane-minor in fp32, scans, scatters the outputs back in T.
template <typename T>
void scanChannelBlock(
    const ScanArgs<T>& a, const ScanVariant& variant, int32_t b, int32_t d0, const float* Bt, const float* Ct)
{
    const int W = variant.lanes;
    const size_t L = static_cast<size_t>(a.seqlen), N = static_cast<size_t>(a.dstate);
    std::vector<float> buffer((5 * L + 2 * N + 2) * W); // delta, u, z, y, scratch (L + N), A (N), bias, D
    float *delta = buffer.data(), *u = delta + L * W, *z = u + L * W, *y = z + L * W, *scratch = y + L * W;
    float *A = scratch + (L + N) * W, *bias = A + N * W, *D = bias + W;
    const int32_t lanes = std::min(W, a.dim - d0);
    for (int32_t lane = 0; lane < lanes; ++lane)
    {
        const int32_t d = d0 + lane;
        const size_t row = (static_cast<size_t>(b) * a.dim + d) * L;
        for (size_t t = 0; t < L; ++t)
        {
            delta[t * W + lane] = toFloat(a.delta[row + t]);
            u[t * W + lane] = toFloat(a.u[row + t]);
            z[t * W + lane] = a.z ? toFloat(a.z[row + t]) : 0.0f;
        }
        for (size_t n = 0; n < N; ++n)
            A[n * W + lane] = a.A[d * N + n];
        bias[lane] = a.deltaBias ? a.deltaBias[d] : 0.0f;
        D[lane] = a.D ? a.D[d] : 0.0f;
    }
    const ChannelBlock block{a.dstate, a.seqlen, a.reverse, a.deltaSoftplus, A, Bt, Ct, a.D ? D : nullptr, bias, u,
        a.z ? z : nullptr, delta, scratch, y};
    variant.scanBlock(block);
    for (int32_t lane = 0; lane < lanes; ++lane)
    {
        const size_t row = (static_cast<size_t>(b) * a.dim + d0 + lane) * L;
        for (size_t t = 0; t < L; ++t)
            a.out[row + t] = fromFloat<T>(y[t * W + lane]);
    }
}

template <typename T>
void scan(const ScanArgs<T>& a, const ScanVariant& variant, const rmeeto_cpu_threads_t* threads)
{
    const size_t perBatch = static_cast<size_t>(a.seqlen) * a.dstate;
    std::vector<float> Bt(a.batch * perBatch), Ct(a.batch * perBatch);
    parallelFor(threads, a.batch, [&](size_t b) {
        transposeToTimeMajor(a.B + b * perBatch, a.dstate, a.seqlen, Bt.data() + b * perBatch);
        transposeToTimeMajor(a.C + b * perBatch, a.dstate, a.seqlen, Ct.data() + b * perBatch);
    });
    const size_t blocks = (a.dim + variant.lanes - 1) / variant.lanes;
    parallelFor(threads, a.batch * blocks, [&](size_t task) {
        const size_t b = task / blocks;
        scanChannelBlock(a, variant, static_cast<int32_t>(b), static_cast<int32_t>(task % blocks * variant.lanes),
            Bt.data() + b * perBatch, Ct.data() + b * perBatch);
    });
}

template <typename T>
rmeeto_status_t scanAs(int32_t batch, int32_t dim, int32_t dstate, int32_t seqlen, const void* u, const void* delta,
    const float* A, const void* B, const void* C, const float* D, const void* z, const float* deltaBias,
    int32_t deltaSoftplus, int32_t reverse, void* out, const ScanVariant& variant, const rmeeto_cpu_threads_t* threads)
{
    const ScanArgs<T> args{batch, dim, dstate, seqlen, static_cast<const T*>(u), static_cast<const T*>(delta),
        static_cast<const T*>(B), static_cast<const T*>(C), static_cast<const T*>(z), A, D, deltaBias,
        deltaSoftplus != 0, reverse != 0, static_cast<T*>(out)};
    scan(args, variant, threads);
    return RMEETO_STATUS_SUCCESS;
}

} // namespace
} // namespace rmeeto_cpu

extern "C" rmeeto_status_t rmeeto_cpu_selective_scan_fwd(rmeeto_dtype_t dtype, int32_t batch, int32_t dim,
    int32_t dstate, int32_t seqlen, const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const void* z, const float* delta_bias, int32_t delta_softplus, int32_t reverse, void* out,
    const rmeeto_cpu_threads_t* threads)
{
    using namespace rmeeto_cpu;
    if (batch <= 0 || dim <= 0 || dstate <= 0 || seqlen <= 0 || !u || !delta || !A || !B || !C || !out)
        return RMEETO_STATUS_INVALID_ARGUMENT;
    const ScanVariant* variant = scanVariant();
    if (!variant)
        return RMEETO_STATUS_UNSUPPORTED;
    switch (dtype)
    {
    case RMEETO_DTYPE_FLOAT32:
        return scanAs<float>(batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, *variant, threads);
    case RMEETO_DTYPE_FLOAT16:
        return scanAs<_Float16>(batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, *variant, threads);
    case RMEETO_DTYPE_BFLOAT16:
        return scanAs<BFloat16>(batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, *variant, threads);
    }
    return RMEETO_STATUS_UNSUPPORTED;
}
