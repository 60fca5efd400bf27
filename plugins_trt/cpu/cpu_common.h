// Internals shared by the CPU kernels: element conversion to and from fp32, and running tasks on threads.
#ifndef RMEETO_CPU_COMMON_H
#define RMEETO_CPU_COMMON_H

#include <cstdint>
#include <cstring>
#include <functional>

#include "rmeeto_cpu_kernels.h"

namespace rmeeto_cpu
{

// Activations as stored: fp32, IEEE half (_Float16, GCC >= 12 on x86-64 and aarch64) or bfloat16 bits.
struct BFloat16
{
    uint16_t bits;
};

// Internal linkage: the scan's variants compile these for AVX2 and AVX-512 too (scan_block.cpp), and a
// shared out-of-line copy could then stand in for the baseline one.
namespace
{

inline uint32_t bitsOf(float x)
{
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
}

inline float floatOf(uint32_t bits)
{
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

inline float toFloat(float x) { return x; }
inline float toFloat(_Float16 x) { return static_cast<float>(x); }
inline float toFloat(BFloat16 x) { return floatOf(static_cast<uint32_t>(x.bits) << 16); }

// Round to nearest even, as torch's .to(dtype); NaN stays a (quiet) NaN.
template <typename T>
T fromFloat(float x);
template <>
inline float fromFloat<float>(float x) { return x; }
template <>
inline _Float16 fromFloat<_Float16>(float x) { return static_cast<_Float16>(x); }
template <>
inline BFloat16 fromFloat<BFloat16>(float x)
{
    const uint32_t bits = bitsOf(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return BFloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)};
    return BFloat16{static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
}

} // namespace

// Runs task(i) for i in [0, count) as `threads` says (see rmeeto_cpu_threads_t).
void parallelFor(const rmeeto_cpu_threads_t* threads, size_t count, const std::function<void(size_t)>& task);

} // namespace rmeeto_cpu

#endif // RMEETO_CPU_COMMON_H
