// One channel of the selective scan in fp32, compiled once per instruction set (CMakeLists.txt: baseline,
// and AVX2 + FMA on x86-64) and picked at run time (scan_channel.h). Every loop here is written to be
// vectorised, exp and log included (libm's are one call per element). Everything has internal linkage
// except the entry point, so no AVX2 code can stand in for a baseline symbol.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "scan_channel.h"

namespace rmeeto_cpu
{
namespace RMEETO_SCAN_VARIANT
{
namespace
{

float floatFromBits(uint32_t bits)
{
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

constexpr float kLn2High = 0.693359375f; // ln 2 in two parts: k * kLn2High is exact for |k| < 2^9
constexpr float kLn2Low = -2.12194440e-4f;

// exp(x): x = k ln2 + f, |f| <= ln2 / 2, exp(f) by Cephes' expf polynomial, 2^k into the exponent bits.
// About 1 ulp; 0 below -87.3 (where expf is subnormal), inf above 88.37 (expf is finite up to 88.72).
__attribute__((always_inline)) inline float expVectorisable(float x)
{
    constexpr float kMinArgument = -87.3365478515625f;
    constexpr float kMaxArgument = 88.3762626647949f;
    const float clamped = x < kMinArgument ? kMinArgument : (x > kMaxArgument ? kMaxArgument : x);
    constexpr float kRoundingShift = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer
    const float k = (clamped * 1.44269504088896341f + kRoundingShift) - kRoundingShift;
    const float f = (clamped - k * kLn2High) - k * kLn2Low;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    const float result = ((p * f) * f + f + 1.0f) * floatFromBits(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
    const float belowRange = x < kMinArgument ? 0.0f : result; // selects, not branches: loops vectorise
    return x > kMaxArgument ? std::numeric_limits<float>::infinity() : belowRange; // NaN stays NaN
}

// log(w) for w in [1, 2]: w = m 2^e with m in [sqrt(1/2), sqrt(2)], log(m) by Cephes' logf polynomial.
__attribute__((always_inline)) inline float logOneToTwo(float w)
{
    const bool halve = w > 1.41421356f;
    const float e = halve ? 1.0f : 0.0f;
    const float x = (halve ? w * 0.5f : w) - 1.0f;
    const float z = x * x;
    float p = 7.0376836292e-2f;
    p = p * x - 1.1514610310e-1f;
    p = p * x + 1.1676998740e-1f;
    p = p * x - 1.2420140846e-1f;
    p = p * x + 1.4249322787e-1f;
    p = p * x - 1.6668057665e-1f;
    p = p * x + 2.0000714765e-1f;
    p = p * x - 2.4999993993e-1f;
    p = p * x + 3.3333331174e-1f;
    const float y = p * x * z + e * kLn2Low - 0.5f * z;
    return x + y + e * kLn2High;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), and x itself above torch's threshold 20. log1p(e) for e in
// (0, 1] as log(1 + e) * e / ((1 + e) - 1), which cancels the rounding of 1 + e.
__attribute__((always_inline)) inline float softplus(float x)
{
    const float e = expVectorisable(x < 0.0f ? x : -x);
    const float w = 1.0f + e;
    const float log1pE = w == 1.0f ? e : logOneToTwo(w) * e / (w - 1.0f);
    return x > 20.0f ? x : (x > 0.0f ? x : 0.0f) + log1pE;
}

} // namespace

void scanChannel(const ChannelScan& c)
{
    const int L = c.seqlen, N = c.dstate;
    float* __restrict dt = c.delta;
    float* __restrict dtu = c.scratch;
    float* __restrict h = dtu + L;
    float* __restrict terms = h + N;
    const float* __restrict u = c.u;
    const float* __restrict A = c.A;
    for (int t = 0; t < L; ++t)
    {
        const float step = dt[t] + c.deltaBias;
        dt[t] = c.deltaSoftplus ? softplus(step) : step;
        dtu[t] = dt[t] * u[t];
    }
    for (int n = 0; n < N; ++n)
        h[n] = 0.0f;
    float* __restrict y = c.y;
    for (int i = 0; i < L; ++i)
    {
        const int t = c.reverse ? L - 1 - i : i;
        const float dtT = dt[t], dtuT = dtu[t];
        const float* __restrict bT = c.Bt + static_cast<size_t>(t) * N;
        const float* __restrict cT = c.Ct + static_cast<size_t>(t) * N;
        for (int n = 0; n < N; ++n) // the vector loop of the whole op
        {
            const float state = expVectorisable(dtT * A[n]) * h[n] + dtuT * bT[n];
            h[n] = state;
            terms[n] = state * cT[n];
        }
        float yT = 0.0f; // summed in order: a vectorised reduction would need reassociation
        for (int n = 0; n < N; ++n)
            yT += terms[n];
        y[t] = yT;
    }
    if (c.D)
        for (int t = 0; t < L; ++t)
            y[t] += *c.D * u[t];
    if (c.z)
    {
        const float* __restrict z = c.z;
        for (int t = 0; t < L; ++t)
            y[t] *= z[t] / (1.0f + expVectorisable(-z[t])); // SiLU
    }
}

} // namespace RMEETO_SCAN_VARIANT
} // namespace rmeeto_cpu
