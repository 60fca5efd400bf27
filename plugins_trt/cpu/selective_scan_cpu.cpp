// Selective scan forward on the CPU: one task per (batch, channel), the state recurrence vectorised over
// d_state. Semantics are those of rmeeto_selective_scan_fwd (kernels/rmeeto_kernels.h).
#include <vector>

#include "cpu_common.h"
#include "scan_channel.h"

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

template <typename T>
void toFloats(const T* x, int32_t count, float* out)
{
    for (int32_t i = 0; i < count; ++i)
        out[i] = toFloat(x[i]);
}

template <typename T>
void scanChannel(const ScanArgs<T>& a, int32_t b, int32_t d, const float* Bt, const float* Ct)
{
    const size_t row = (static_cast<size_t>(b) * a.dim + d) * a.seqlen;
    const int32_t L = a.seqlen;
    std::vector<float> buffer(5 * static_cast<size_t>(L) + 2 * a.dstate); // delta, u, z, y, scratch
    float *delta = buffer.data(), *u = delta + L, *z = u + L, *y = z + L, *scratch = y + L;
    toFloats(a.delta + row, L, delta);
    toFloats(a.u + row, L, u);
    if (a.z)
        toFloats(a.z + row, L, z);
    const ChannelScan channel{a.dstate, L, a.reverse, a.deltaSoftplus, a.A + static_cast<size_t>(d) * a.dstate, Bt, Ct,
        a.D ? a.D + d : nullptr, a.deltaBias ? a.deltaBias[d] : 0.0f, u, a.z ? z : nullptr, delta, scratch, y};
    scanChannelForThisCpu()(channel);
    for (int32_t t = 0; t < L; ++t)
        a.out[row + t] = fromFloat<T>(y[t]);
}

template <typename T>
void scan(const ScanArgs<T>& a, const rmeeto_cpu_threads_t* threads)
{
    const size_t perBatch = static_cast<size_t>(a.seqlen) * a.dstate;
    std::vector<float> Bt(a.batch * perBatch), Ct(a.batch * perBatch);
    parallelFor(threads, a.batch, [&](size_t b) {
        transposeToTimeMajor(a.B + b * perBatch, a.dstate, a.seqlen, Bt.data() + b * perBatch);
        transposeToTimeMajor(a.C + b * perBatch, a.dstate, a.seqlen, Ct.data() + b * perBatch);
    });
    parallelFor(threads, static_cast<size_t>(a.batch) * a.dim, [&](size_t task) {
        const int32_t b = static_cast<int32_t>(task / a.dim);
        scanChannel(a, b, static_cast<int32_t>(task % a.dim), Bt.data() + b * perBatch, Ct.data() + b * perBatch);
    });
}

template <typename T>
rmeeto_status_t scanAs(int32_t batch, int32_t dim, int32_t dstate, int32_t seqlen, const void* u, const void* delta,
    const float* A, const void* B, const void* C, const float* D, const void* z, const float* deltaBias,
    int32_t deltaSoftplus, int32_t reverse, void* out, const rmeeto_cpu_threads_t* threads)
{
    const ScanArgs<T> args{batch, dim, dstate, seqlen, static_cast<const T*>(u), static_cast<const T*>(delta),
        static_cast<const T*>(B), static_cast<const T*>(C), static_cast<const T*>(z), A, D, deltaBias,
        deltaSoftplus != 0, reverse != 0, static_cast<T*>(out)};
    scan(args, threads);
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
    switch (dtype)
    {
    case RMEETO_DTYPE_FLOAT32:
        return scanAs<float>(batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, threads);
    case RMEETO_DTYPE_FLOAT16:
        return scanAs<_Float16>(batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, threads);
    case RMEETO_DTYPE_BFLOAT16:
        return scanAs<BFloat16>(batch, dim, dstate, seqlen, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out, threads);
    }
    return RMEETO_STATUS_UNSUPPORTED;
}
