// Selective scan forward on the CPU: one task per (batch, channel), the state recurrence vectorised over
// d_state. Semantics are those of rmeeto_selective_scan_fwd (kernels/rmeeto_kernels.h).
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_common.h"

namespace rmeeto_cpu
{
namespace
{

// exp(x) in plain float arithmetic that the compiler vectorises (libm's expf is a call per element):
// x = k ln2 + f with |f| <= ln2 / 2, exp(f) by a degree-7 polynomial (Cephes' expf coefficients), 2^k
// written into the exponent bits. About 1 ulp; 0 below -87.3 (where expf is subnormal) and inf above
// 88.37 (expf is finite up to 88.72): the scan's arguments dt * A are <= 0 for decaying states.
inline float expVectorisable(float x)
{
    constexpr float kMinArgument = -87.3365478515625f;
    constexpr float kMaxArgument = 88.3762626647949f;
    const float clamped = x < kMinArgument ? kMinArgument : (x > kMaxArgument ? kMaxArgument : x);
    constexpr float kRoundingShift = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer
    const float k = (clamped * 1.44269504088896341f + kRoundingShift) - kRoundingShift;
    const float f = (clamped - k * 0.693359375f) - k * -2.12194440e-4f; // ln2 in two parts, exact k * hi
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    const float expF = (p * f) * f + f + 1.0f;
    const float result = expF * floatOf(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
    if (x < kMinArgument)
        return 0.0f;
    return x > kMaxArgument ? std::numeric_limits<float>::infinity() : result; // NaN stays NaN
}

// The recurrence of one channel over every step: h = exp(dt_t A) h + dt_t u_t B_t, y_t = C_t . h.
// B, C are time-major (seqlen, dstate) so each step reads dstate contiguous values. On x86-64 the
// function is also compiled for AVX2 + FMA and picked at load time; the n loop is the vector loop.
#if defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void scanStates(int dstate, int seqlen, bool reverse, const float* __restrict A, const float* __restrict Bt,
    const float* __restrict Ct, const float* __restrict dt, const float* __restrict dtu, float* __restrict h,
    float* __restrict y)
{
    for (int n = 0; n < dstate; ++n)
        h[n] = 0.0f;
    for (int step = 0; step < seqlen; ++step)
    {
        const int t = reverse ? seqlen - 1 - step : step;
        const float dtT = dt[t];
        const float dtuT = dtu[t];
        const float* __restrict bT = Bt + static_cast<size_t>(t) * dstate;
        const float* __restrict cT = Ct + static_cast<size_t>(t) * dstate;
        float yT = 0.0f;
#pragma omp simd reduction(+ : yT)
        for (int n = 0; n < dstate; ++n)
        {
            const float state = expVectorisable(dtT * A[n]) * h[n] + dtuT * bT[n];
            h[n] = state;
            yT += state * cT[n];
        }
        y[t] = yT;
    }
}

inline float softplus(float x)
{
    return x > 20.0f ? x : std::log1p(std::exp(x)); // torch's threshold: above it softplus(x) is x in fp32
}

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
void scanChannel(const ScanArgs<T>& a, int32_t b, int32_t d, const float* Bt, const float* Ct)
{
    const size_t row = (static_cast<size_t>(b) * a.dim + d) * a.seqlen;
    const float bias = a.deltaBias ? a.deltaBias[d] : 0.0f;
    std::vector<float> dt(a.seqlen), dtu(a.seqlen), y(a.seqlen), h(a.dstate);
    for (int32_t t = 0; t < a.seqlen; ++t)
    {
        const float step = toFloat(a.delta[row + t]) + bias;
        dt[t] = a.deltaSoftplus ? softplus(step) : step;
        dtu[t] = dt[t] * toFloat(a.u[row + t]);
    }
    scanStates(a.dstate, a.seqlen, a.reverse, a.A + static_cast<size_t>(d) * a.dstate, Bt, Ct, dt.data(), dtu.data(),
        h.data(), y.data());
    for (int32_t t = 0; t < a.seqlen; ++t)
    {
        float value = y[t];
        if (a.D)
            value += a.D[d] * toFloat(a.u[row + t]);
        if (a.z)
        {
            const float gate = toFloat(a.z[row + t]);
            value *= gate / (1.0f + std::exp(-gate)); // SiLU
        }
        a.out[row + t] = fromFloat<T>(value);
    }
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
