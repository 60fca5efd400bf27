// The selective scan of a block of channels in fp32, compiled once per instruction set into the namespace
// RMEETO_SCAN_VARIANT (CMakeLists.txt: baseline, and AVX2 + FMA and AVX-512 on x86-64), whose kLanes
// (scan_block.h) sets the vector width; the variant is chosen at run time (scan_variant.cpp). Every loop here
// is written to be vectorised, exp and log included (libm's are one call per element). Everything has
// internal linkage except the entry point, so no AVX code can stand in for a baseline symbol.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <limits>
#include <type_traits>
#include <utility>

#include "cpu_common.h"
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

// The bits of one float (cpu_common.h) or of each lane, and back: the exp below serves both.
using rmeeto_cpu::bitsOf;
using rmeeto_cpu::floatOf;
BitLanes bitsOf(Lanes x) { return __builtin_bit_cast(BitLanes, x); }
Lanes floatOf(BitLanes bits) { return __builtin_bit_cast(Lanes, bits); }

constexpr float kLn2High = 0.693359375f; // ln 2 in two parts: k * kLn2High is exact for |k| < 2^9
constexpr float kLn2Low = -2.12194440e-4f;
constexpr float kMinExpArgument = -87.3365478515625f;
constexpr float kMaxExpArgument = 88.3762626647949f;
constexpr float kRoundingShift = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer

// exp(x) = result where x is in range, 0 below it, inf above it; NaN stays NaN.
template <typename V>
__attribute__((always_inline)) inline V selectRange(V x, V result)
{
    const V zero{};
    const V belowRange = x < kMinExpArgument ? zero : result;
    return x > kMaxExpArgument ? zero + std::numeric_limits<float>::infinity() : belowRange;
}

// exp(x) of a float, or lane by lane of Lanes (written on vectors, so that no compiler heuristic can keep
// the scan's exp scalar): x = k ln2 + f, |f| <= ln2 / 2, exp(f) by Cephes' expf polynomial, times 2^k.
// About 1 ulp; 0 below -87.3 (where expf is subnormal), inf above 88.37 (expf is finite up to 88.72), NaN
// for NaN. Out of that range the steps compute garbage that selectRange replaces, so x needs no clamping;
// selects, not branches, so that loops vectorise.
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
    const V expF = (p * f) * f + f + 1.0f;
#if defined(__AVX512F__)
    // expF * 2^k in one instruction, the same product in range (masked with every lane: the unmasked form
    // trips GCC 12's -Wmaybe-uninitialized).
    if constexpr (sizeof(V) == sizeof(__m512))
        return selectRange(x, V(_mm512_maskz_scalef_ps(0xffff, __m512(expF), __m512(k))));
#endif
    // 2^k: shifted's low bits hold k + bits(kRoundingShift), whose own low 9 bits are 0: shifting them into
    // the exponent field gives the bits of 2^k with no float-to-int conversion.
    return selectRange(x, expF * floatOf((bitsOf(shifted) + 127u) << 23));
}

constexpr uint32_t kAboveSqrtHalfBits = 0x3f3504f4; // the float after sqrt(1/2)

// log(w) for w in [1, 2]: w = m 2^e with m in [sqrt(1/2), sqrt(2)], log(m) by Cephes' logf polynomial. m and e
// come from the bits (adding 1 - kAboveSqrtHalf carries w > sqrt(2) into the next binade), not from a select,
// for which GCC evaluates the polynomial and the division after it twice.
__attribute__((always_inline)) inline float logOneToTwo(float w)
{
    const uint32_t bits = bitsOf(w) + (bitsOf(1.0f) - kAboveSqrtHalfBits);
    const float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127);
    const float x = floatOf((bits & 0x7fffffu) + kAboveSqrtHalfBits) - 1.0f;
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

// Lane i of the result is lane Half * kLanes / 2 + i / 2 of a (i even) or of b (i odd).
template <int Half, int... I>
Lanes interleave(Lanes a, Lanes b, std::integer_sequence<int, I...>)
{
    return __builtin_shufflevector(a, b, (Half * kLanes / 2 + I / 2 + I % 2 * kLanes)...);
}

// Transposes kLanes x kLanes floats, rows `fromStride` apart, into rows `toStride` apart: log2(kLanes)
// rounds of interleaving row i with row i + kLanes / 2 (the perfect shuffle), whole vectors throughout.
void transposeTile(const float* from, size_t fromStride, float* to, size_t toStride)
{
    constexpr auto lanes = std::make_integer_sequence<int, kLanes>();
    Lanes rows[kLanes], next[kLanes];
    for (int i = 0; i < kLanes; ++i)
        rows[i] = load(from + i * fromStride);
    for (int round = 1; round < kLanes; round *= 2)
    {
        for (int i = 0; i < kLanes / 2; ++i)
        {
            next[2 * i] = interleave<0>(rows[i], rows[i + kLanes / 2], lanes);
            next[2 * i + 1] = interleave<1>(rows[i], rows[i + kLanes / 2], lanes);
        }
        std::memcpy(rows, next, sizeof rows);
    }
    for (int i = 0; i < kLanes; ++i)
        store(to + i * toStride, rows[i]);
}

// kLanes rows of `length` floats (a multiple of kLanes), `length` apart, into lane-minor (length, kLanes), or back.
void rowsToLanes(const float* rows, size_t length, float* lanes)
{
    for (size_t t = 0; t < length; t += kLanes)
        transposeTile(rows + t, length, lanes + t * kLanes, kLanes);
}

void lanesToRows(const float* lanes, size_t length, float* rows)
{
    for (size_t t = 0; t < length; t += kLanes)
        transposeTile(lanes + t * kLanes, kLanes, rows + t, length);
}

// The scan proper, lane-minor: h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = sum over n of C_t h_t in order.
void scanLanes(const ChannelBlock& c, const float* __restrict dt, const float* __restrict dtu,
    const float* __restrict A, float* __restrict h, float* __restrict y)
{
    constexpr int W = kLanes;
    const int L = c.seqlen, N = c.dstate;
    for (int i = 0; i < N * W; ++i)
        h[i] = 0.0f;
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
}

// Row-wise (each channel's time steps contiguous, so these loops vectorise over t): dt and dt * u before
// the scan, D and the gate after it; the lane-minor scan between them, reached by tile transposes. u,
// delta, z and out are (channels, seqlen); channels past c.channels scan zeros.
void scanRows(const ChannelBlock& c, const float* u, const float* delta, const float* z, float* out)
{
    constexpr int W = kLanes;
    const size_t L = static_cast<size_t>(c.seqlen), N = static_cast<size_t>(c.dstate);
    const size_t paddedL = (L + W - 1) / W * W;
    float* __restrict dtRows = c.scratch; // later y's rows
    float* __restrict dtuRows = dtRows + W * paddedL;
    float* __restrict dt = dtuRows + W * paddedL;
    float* __restrict dtu = dt + paddedL * W;
    float* __restrict y = dtu + paddedL * W;
    float* __restrict h = y + paddedL * W;
    float* __restrict A = h + N * W;
    for (int lane = 0; lane < W; ++lane)
    {
        float* __restrict dtRow = dtRows + lane * paddedL;
        float* __restrict dtuRow = dtuRows + lane * paddedL;
        const size_t length = lane < c.channels ? L : 0;
        if (length)
        {
            const float* __restrict deltaRow = delta + lane * L;
            const float* __restrict uRow = u + lane * L;
            const float bias = c.deltaBias ? c.deltaBias[lane] : 0.0f;
            for (size_t t = 0; t < L; ++t)
            {
                const float step = deltaRow[t] + bias;
                dtRow[t] = c.deltaSoftplus ? softplus(step) : step;
                dtuRow[t] = dtRow[t] * uRow[t];
            }
        }
        std::fill(dtRow + length, dtRow + paddedL, 0.0f); // padding: zero steps leave the states at zero
        std::fill(dtuRow + length, dtuRow + paddedL, 0.0f);
    }
    rowsToLanes(dtRows, paddedL, dt);
    rowsToLanes(dtuRows, paddedL, dtu);
    for (size_t n = 0; n < N; ++n)
        for (int lane = 0; lane < W; ++lane)
            A[n * W + lane] = lane < c.channels ? c.A[lane * N + n] : 0.0f;
    scanLanes(c, dt, dtu, A, h, y);
    float* __restrict yRows = dtRows;
    lanesToRows(y, paddedL, yRows);
    for (int lane = 0; lane < c.channels; ++lane)
    {
        const float* __restrict yRow = yRows + lane * paddedL;
        const float* __restrict uRow = u + lane * L;
        const float* __restrict zRow = z ? z + lane * L : nullptr;
        const float D = c.D ? c.D[lane] : 0.0f;
        float* __restrict outRow = out + lane * L;
        for (size_t t = 0; t < L; ++t)
        {
            float value = yRow[t];
            if (c.D)
                value += D * uRow[t];
            if (zRow)
                value *= zRow[t] / (1.0f + expOf(-zRow[t])); // SiLU
            outRow[t] = value;
        }
    }
}

template <typename T>
const float* toFloatRows(const void* from, size_t count, float* to)
{
    for (size_t i = 0; i < count; ++i)
        to[i] = toFloat(static_cast<const T*>(from)[i]);
    return to;
}

// fp32 rows in place; fp16 and bf16 through fp32 copies, converted here rather than inside scanRows' loops
// (which then stay vectorised: GCC 12 converts _Float16 one element at a time).
template <typename T>
void scanBlockAs(const ChannelBlock& c)
{
    if constexpr (std::is_same_v<T, float>)
        scanRows(c, static_cast<const float*>(c.u), static_cast<const float*>(c.delta),
            static_cast<const float*>(c.z), static_cast<float*>(c.y));
    else
    {
        const size_t count = static_cast<size_t>(c.channels) * c.seqlen;
        const size_t rowsSpace = 4 * static_cast<size_t>(kLanes) * c.seqlen; // the scratch's last part
        float* rows = c.scratch + scanBlockScratch(kLanes, c.seqlen, c.dstate) - rowsSpace;
        float* out = rows + 3 * count;
        scanRows(c, toFloatRows<T>(c.u, count, rows), toFloatRows<T>(c.delta, count, rows + count),
            c.z ? toFloatRows<T>(c.z, count, rows + 2 * count) : nullptr, out);
        for (size_t i = 0; i < count; ++i)
            static_cast<T*>(c.y)[i] = fromFloat<T>(out[i]);
    }
}

} // namespace

void scanBlock(const ChannelBlock& c)
{
    switch (c.dtype)
    {
    case RMEETO_DTYPE_FLOAT32:
        return scanBlockAs<float>(c);
    case RMEETO_DTYPE_FLOAT16:
        return scanBlockAs<_Float16>(c);
    case RMEETO_DTYPE_BFLOAT16:
        return scanBlockAs<BFloat16>(c);
    }
}

} // namespace RMEETO_SCAN_VARIANT
} // namespace rmeeto_cpu
