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
    rmeeto_dtype_t dtype; // T's
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

// One task's scratch, kept by its thread across tasks and calls (a fresh, zeroed vector per task cost ~3% of a scan).
float* taskScratch(size_t floats)
{
    thread_local std::vector<float> scratch;
    if (scratch.size() < floats)
        scratch.resize(floats);
    return scratch.data();
}

// Scans channels d0 .. d0 + variant.lanes - 1 of sample b (those that exist).
template <typename T>
void scanChannelBlock(
    const ScanArgs<T>& a, const ScanVariant& variant, int32_t b, int32_t d0, const float* Bt, const float* Ct)
{
    const size_t first = (static_cast<size_t>(b) * a.dim + d0) * a.seqlen;
    const ChannelBlock block{a.dtype, std::min(variant.lanes, a.dim - d0), a.dstate, a.seqlen, a.reverse,
        a.deltaSoftplus, a.u + first, a.delta + first, a.z ? a.z + first : nullptr, a.A + static_cast<size_t>(d0) * a.dstate,
        a.D ? a.D + d0 : nullptr, a.deltaBias ? a.deltaBias + d0 : nullptr, Bt, Ct,
        taskScratch(scanBlockScratch(variant.lanes, a.seqlen, a.dstate)), a.out + first};
    variant.scanBlock(block);
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
rmeeto_status_t scanAs(rmeeto_dtype_t dtype, int32_t batch, int32_t dim, int32_t dstate, int32_t seqlen, const void* u, const void* delta,
    const float* A, const void* B, const void* C, const float* D, const void* z, const float* deltaBias,
    int32_t deltaSoftplus, int32_t reverse, void* out, const ScanVariant& variant, const rmeeto_cpu_threads_t* threads)
{
    const ScanArgs<T> args{dtype, batch, dim, dstate, seqlen, static_cast<const T*>(u), static_cast<const T*>(delta),
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
        return scanAs<float>(dtype, batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, *variant, threads);
    case RMEETO_DTYPE_FLOAT16:
        return scanAs<_Float16>(dtype, batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, *variant, threads);
    case RMEETO_DTYPE_BFLOAT16:
        return scanAs<BFloat16>(dtype, batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, *variant, threads);
    }
    return RMEETO_STATUS_UNSUPPORTED;
}
