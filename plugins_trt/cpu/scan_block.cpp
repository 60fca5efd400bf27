// The selective scan of a block of channels in fp32, compiled once per instruction set into the namespace
// RMEETO_SCAN_VARIANT (CMakeLists.txt: baseline, and AVX2 + FMA and AVX-512 on x86-64), whose kLanes
// (scan_block.h) sets the vector width; the variant is chosen at run time (scan_variant.cpp). Every loop here
// is written to be vectorised, exp and log included (libm's are one call per element). Everything has
// internal linkage except the entry point, so no AVX code can stand in for a baseline symbol.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "scan_block.h"

namespace rmeeto_cpu
{
namespace RMEETO_SCAN_VARIANT
{
namespace
{

// kLanes fp32 values as one GCC/Clang vector: one AVX2 or AVX-512 register, two SSE ones.
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef uint32_t BitLanes __attribute__((vector_size(kLanes * sizeof(uint32_t))));

// The bits of one float or of each lane, and back: the exp below serves both.
uint32_t bitsOf(float x) { return __builtin_bit_cast(uint32_t, x); }
BitLanes bitsOf(Lanes x) { return __builtin_bit_cast(BitLanes, x); }
float floatOf(uint32_t bits) { return __builtin_bit_cast(float, bits); }
Lanes floatOf(BitLanes bits) { return __builtin_bit_cast(Lanes, bits); }

constexpr float kLn2High = 0.693359375f; // ln 2 in two parts: k * kLn2High is exact for |k| < 2^9
constexpr float kLn2Low = -2.12194440e-4f;
constexpr float kMinExpArgument = -87.3365478515625f;
constexpr float kMaxExpArgument = 88.3762626647949f;
constexpr float kRoundingShift = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer

// exp(x) of a float, or lane by lane of Lanes (written on vectors, so that no compiler heuristic can keep
// the scan's exp scalar): x = k ln2 + f, |f| <= ln2 / 2, exp(f) by Cephes' expf polynomial, 2^k into the
// exponent bits. About 1 ulp; 0 below -87.3 (where expf is subnormal), inf above 88.37 (expf is finite up
// to 88.72), NaN for NaN. Out of that range the steps compute garbage that the two selects at the end
// replace, so x needs no clamping; selects, not branches, so that loops vectorise.
template <typename V>
__attribute__((always_inline)) inline V expOf(V x)
{
    const V zero{};
    const V shifted = x * 1.44269504088896341f + kRoundingShift; // exactly kRoundingShift + k in range
    const V k = shifted - kRoundingShift;
    const V f = (x - k * kLn2High) - k * kLn2Low;
    V p = zero + 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    // 2^k: shifted's low bits hold k + bits(kRoundingShift), whose own low 9 bits are 0: shifting them into
    // the exponent field gives the bits of 2^k with no float-to-int conversion.
    const V twoToK = floatOf((bitsOf(shifted) + 127u) << 23);
    const V result = ((p * f) * f + f + 1.0f) * twoToK;
    const V belowRange = x < kMinExpArgument ? zero : result;
    return x > kMaxExpArgument ? zero + std::numeric_limits<float>::infinity() : belowRange;
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
    const float e = expOf(x < 0.0f ? x : -x);
    const float w = 1.0f + e;
    const float log1pE = w == 1.0f ? e : logOneToTwo(w) * e / (w - 1.0f);
    return x > 20.0f ? x : (x > 0.0f ? x : 0.0f) + log1pE;
}

Lanes load(const float* p)
{
    Lanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

void store(float* p, Lanes v)
{
    std::memcpy(p, &v, sizeof v);
}

} // namespace

void scanBlock(const ChannelBlock& c)
{
    constexpr int W = kLanes;
    const int L = c.seqlen, N = c.dstate;
    float* __restrict dt = c.delta;
    float* __restrict dtu = c.scratch;
    float* __restrict h = dtu + static_cast<size_t>(L) * W;
    const float* __restrict u = c.u;
    for (int t = 0; t < L; ++t)
        for (int lane = 0; lane < W; ++lane)
        {
            const int i = t * W + lane;
            const float step = dt[i] + c.deltaBias[lane];
            dt[i] = c.deltaSoftplus ? softplus(step) : step;
            dtu[i] = dt[i] * u[i];
        }
    for (int i = 0; i < N * W; ++i)
        h[i] = 0.0f;
    const float* __restrict A = c.A;
    float* __restrict y = c.y;
    for (int step = 0; step < L; ++step)
    {
        const int t = c.reverse ? L - 1 - step : step;
        const Lanes dtT = load(dt + t * W), dtuT = load(dtu + t * W);
        const float* __restrict bT = c.Bt + static_cast<size_t>(t) * N;
        const float* __restrict cT = c.Ct + static_cast<size_t>(t) * N;
        Lanes yT = {};
        for (int n = 0; n < N; ++n) // y sums over n in order, lane by lane
        {
            const Lanes state = expOf(dtT * load(A + n * W)) * load(h + n * W) + dtuT * bT[n];
            store(h + n * W, state);
            yT += state * cT[n];
        }
        store(y + t * W, yT);
    }
    for (int t = 0; t < L; ++t)
        for (int lane = 0; lane < W; ++lane)
        {
            const int i = t * W + lane;
            if (c.D)
                y[i] += c.D[lane] * u[i];
            if (c.z)
                y[i] *= c.z[i] / (1.0f + expOf(-c.z[i])); // SiLU
        }
}

} // namespace RMEETO_SCAN_VARIANT
} // namespace rmeeto_cpu
