// Selective scan forward on the CPU: one task per (sample, block of channels), the channels of a block
// scanned side by side in the vector lanes of the variant that runs (scan_block.h). Semantics are those of
// rmeeto_selective_scan_fwd (kernels/rmeeto_kernels.h).
#include <algorithm>
#include <type_traits>
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

// One task's scratch, kept by its thread across tasks and calls (a fresh, zeroed vector per task cost ~3% of a scan).
float* taskScratch(size_t floats)
{
    thread_local std::vector<float> scratch;
    if (scratch.size() < floats)
        scratch.resize(floats);
    return scratch.data();
}

template <typename T>
const float* toFloatRows(const T* from, size_t count, float* to)
{
    for (size_t i = 0; i < count; ++i)
        to[i] = toFloat(from[i]);
    return to;
}

// Scans channels d0 .. d0 + variant.lanes - 1 of sample b (those that exist): fp32 in place, other dtypes
// through fp32 copies of their rows.
template <typename T>
void scanChannelBlock(
    const ScanArgs<T>& a, const ScanVariant& variant, int32_t b, int32_t d0, const float* Bt, const float* Ct)
{
    const int32_t channels = std::min(variant.lanes, a.dim - d0);
    const size_t first = (static_cast<size_t>(b) * a.dim + d0) * a.seqlen;
    const size_t rowFloats = static_cast<size_t>(channels) * a.seqlen;
    const size_t blockScratch = scanBlockScratch(variant.lanes, a.seqlen, a.dstate);
    constexpr bool isFloat = std::is_same_v<T, float>;
    float* scratch = taskScratch(blockScratch + (isFloat ? 0 : 4 * rowFloats));
    ChannelBlock block{channels, a.dstate, a.seqlen, a.reverse, a.deltaSoftplus, nullptr, nullptr, nullptr,
        a.A + static_cast<size_t>(d0) * a.dstate, a.D ? a.D + d0 : nullptr, a.deltaBias ? a.deltaBias + d0 : nullptr,
        Bt, Ct, scratch, nullptr};
    if constexpr (isFloat)
    {
        block.u = a.u + first;
        block.delta = a.delta + first;
        block.z = a.z ? a.z + first : nullptr;
        block.y = a.out + first;
        variant.scanBlock(block);
    }
    else
    {
        float* rows = scratch + blockScratch;
        block.u = toFloatRows(a.u + first, rowFloats, rows);
        block.delta = toFloatRows(a.delta + first, rowFloats, rows + rowFloats);
        block.z = a.z ? toFloatRows(a.z + first, rowFloats, rows + 2 * rowFloats) : nullptr;
        block.y = rows + 3 * rowFloats;
        variant.scanBlock(block);
        for (size_t i = 0; i < rowFloats; ++i)
            a.out[first + i] = fromFloat<T>(block.y[i]);
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
