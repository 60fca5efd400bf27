/*
 * CUDA emulation for tests: the subset of CUDA C++ our kernels use, on the CPU.
 *
 * Force-included (-include) when a .cu file, first passed through rewrite.py, is compiled as C++.
 * Each CUDA thread is a fiber; the blocks of a grid run one after another (see emulator.cpp).
 * Anything not declared here is not emulated and fails to compile; the names of common CUDA
 * features we do not emulate are declared so that using one says so in the compile error.
 */
#ifndef RMEETO_CUDA_EMULATION_H
#define RMEETO_CUDA_EMULATION_H

#ifdef __cplusplus
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <tuple>
#include <type_traits>
#include <utility>
#endif
#include <stddef.h>
#include <stdint.h>

/* ---- runtime API types (C and C++: rmeeto_kernels.h is a C header) ------------------------------
 * Same type names and layouts as the CUDA runtime's, so the C API's ABI does not change. */
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
typedef enum cudaError
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719
} cudaError_t;

#ifdef __cplusplus
extern "C" {
#endif
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char* cudaGetErrorName(cudaError_t error);
/* For an emulation failure: the message naming the kernel, block and thread. */
const char* cudaGetErrorString(cudaError_t error);
#ifdef __cplusplus
}
#endif

#ifdef __cplusplus

/* ---- execution space and launch qualifiers ------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
/* Only through rewrite.py, which turns __shared__ declarations into per-block storage. */
#define __shared__ static_assert(false, "rmeeto CUDA emulation: __shared__ must be rewritten by rewrite.py");
#define __constant__ static_assert(false, "rmeeto CUDA emulation: __constant__ memory is not emulated");

struct uint3
{
    unsigned x, y, z;
};

struct dim3
{
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace rmeeto_emu
{

/* What a running CUDA thread sees; the fiber that runs it owns one. */
struct ThreadView
{
    uint3 thread;
    uint3 block;
    dim3 blockSize;
    dim3 gridSize;
};
extern ThreadView* g_current __attribute__((visibility("hidden")));

enum class ShuffleKind
{
    Index,
    Up,
    Down,
    Xor
};

__attribute__((visibility("hidden"))) void syncthreads();
__attribute__((visibility("hidden"))) uint64_t shuffle(
    ShuffleKind kind, unsigned mask, uint64_t bits, int argument, int width);
__attribute__((visibility("hidden"))) void* staticShared(const char* key, size_t bytes);
__attribute__((visibility("hidden"))) void* dynamicShared();
__attribute__((visibility("hidden"))) void launch(const char* kernel, dim3 grid, dim3 block, size_t dynamicSmem,
    cudaStream_t stream, void (*body)(void*), void* context);

template <typename T>
T& sharedArray(const char* key)
{
    return *static_cast<T*>(staticShared(key, sizeof(T)));
}

template <typename T>
T shuffleValue(ShuffleKind kind, unsigned mask, T value, int argument, int width)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
        "rmeeto CUDA emulation: shuffles of types wider than 8 bytes are not emulated");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = shuffle(kind, mask, bits, argument, width);
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

/* `kernel<<<grid, block, smem, stream>>>(args)` becomes `Launch(name, &kernel, grid, block, smem, stream)(args)`:
 * the arguments are converted to the kernel's parameter types once, then every thread gets a copy. */
template <typename... Params>
struct Launch
{
    const char* name;
    void (*kernel)(Params...);
    dim3 grid;
    dim3 block;
    size_t smem = 0;
    cudaStream_t stream = nullptr;

    template <typename... Args>
    void operator()(Args&&... args) const
    {
        static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
        struct Context
        {
            void (*kernel)(Params...);
            std::tuple<std::decay_t<Params>...> params;
        } context{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
        launch(
            name, grid, block, smem, stream,
            [](void* c) {
                auto* ctx = static_cast<Context*>(c);
                std::apply(ctx->kernel, ctx->params);
            },
            &context);
    }
};

template <typename... Params>
Launch<Params...> makeLaunch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem = 0,
    cudaStream_t stream = nullptr)
{
    return Launch<Params...>{name, kernel, grid, block, smem, stream};
}

/* Names of CUDA features we do not emulate: using one is a compile error that says so. */
template <typename... A>
struct NotEmulated
{
    static constexpr bool value = false;
};

} // namespace rmeeto_emu

#define threadIdx (::rmeeto_emu::g_current->thread)
#define blockIdx (::rmeeto_emu::g_current->block)
#define blockDim (::rmeeto_emu::g_current->blockSize)
#define gridDim (::rmeeto_emu::g_current->gridSize)
constexpr int warpSize = 32;

inline void __syncthreads()
{
    ::rmeeto_emu::syncthreads();
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize)
{
    return ::rmeeto_emu::shuffleValue(::rmeeto_emu::ShuffleKind::Index, mask, var, srcLane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize)
{
    return ::rmeeto_emu::shuffleValue(::rmeeto_emu::ShuffleKind::Up, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize)
{
    return ::rmeeto_emu::shuffleValue(::rmeeto_emu::ShuffleKind::Down, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize)
{
    return ::rmeeto_emu::shuffleValue(::rmeeto_emu::ShuffleKind::Xor, mask, var, laneMask, width);
}

#define RMEETO_EMU_NOT_EMULATED(name)                                                                                  \
    template <typename... A>                                                                                           \
    int name(A...)                                                                                                     \
    {                                                                                                                  \
        static_assert(::rmeeto_emu::NotEmulated<A...>::value, "rmeeto CUDA emulation: " #name " is not emulated");    \
        return 0;                                                                                                      \
    }
RMEETO_EMU_NOT_EMULATED(__syncwarp)
RMEETO_EMU_NOT_EMULATED(__syncthreads_count)
RMEETO_EMU_NOT_EMULATED(__syncthreads_and)
RMEETO_EMU_NOT_EMULATED(__syncthreads_or)
RMEETO_EMU_NOT_EMULATED(__ballot_sync)
RMEETO_EMU_NOT_EMULATED(__any_sync)
RMEETO_EMU_NOT_EMULATED(__all_sync)
RMEETO_EMU_NOT_EMULATED(__activemask)
RMEETO_EMU_NOT_EMULATED(__match_any_sync)
RMEETO_EMU_NOT_EMULATED(__threadfence)
RMEETO_EMU_NOT_EMULATED(__threadfence_block)
RMEETO_EMU_NOT_EMULATED(__ldg)
RMEETO_EMU_NOT_EMULATED(atomicAdd)
RMEETO_EMU_NOT_EMULATED(atomicSub)
RMEETO_EMU_NOT_EMULATED(atomicMax)
RMEETO_EMU_NOT_EMULATED(atomicMin)
RMEETO_EMU_NOT_EMULATED(atomicExch)
RMEETO_EMU_NOT_EMULATED(atomicCAS)
RMEETO_EMU_NOT_EMULATED(clock64)
RMEETO_EMU_NOT_EMULATED(cudaMalloc)
RMEETO_EMU_NOT_EMULATED(cudaMallocAsync)
RMEETO_EMU_NOT_EMULATED(cudaFree)
RMEETO_EMU_NOT_EMULATED(cudaMemcpy)
RMEETO_EMU_NOT_EMULATED(cudaMemcpyAsync)
RMEETO_EMU_NOT_EMULATED(cudaMemsetAsync)
RMEETO_EMU_NOT_EMULATED(cudaFuncSetAttribute)
RMEETO_EMU_NOT_EMULATED(cudaLaunchKernel)
RMEETO_EMU_NOT_EMULATED(cudaStreamSynchronize)
RMEETO_EMU_NOT_EMULATED(cudaDeviceSynchronize)
RMEETO_EMU_NOT_EMULATED(cudaGetDeviceProperties)
#undef RMEETO_EMU_NOT_EMULATED

/* ---- device math: CUDA's overloads that C++ spells differently --------------------------------- */
#define RMEETO_EMU_MIN_MAX(T)                                                                                          \
    inline T min(T a, T b)                                                                                             \
    {                                                                                                                  \
        return b < a ? b : a;                                                                                          \
    }                                                                                                                  \
    inline T max(T a, T b)                                                                                             \
    {                                                                                                                  \
        return a < b ? b : a;                                                                                          \
    }
RMEETO_EMU_MIN_MAX(int)
RMEETO_EMU_MIN_MAX(unsigned)
RMEETO_EMU_MIN_MAX(long)
RMEETO_EMU_MIN_MAX(unsigned long)
RMEETO_EMU_MIN_MAX(long long)
RMEETO_EMU_MIN_MAX(unsigned long long)
#undef RMEETO_EMU_MIN_MAX
inline float min(float a, float b)
{
    return fminf(a, b);
}
inline float max(float a, float b)
{
    return fmaxf(a, b);
}
/* Rounded products that must not fuse into an FMA: the build passes -ffp-contract=off everywhere. */
inline float __fmul_rn(float a, float b)
{
    return a * b;
}
inline float __fadd_rn(float a, float b)
{
    return a + b;
}
inline float __fdividef(float a, float b)
{
    return a / b;
}
inline float __expf(float x)
{
    return expf(x);
}
inline float __logf(float x)
{
    return logf(x);
}
inline float rsqrtf(float x)
{
    return 1.f / sqrtf(x);
}
using std::isinf;
using std::isnan;

/* ---- 16-bit floats: storage types with round-to-nearest-even conversions ------------------------ */
namespace rmeeto_emu
{
inline uint32_t floatBits(float v)
{
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return bits;
}
inline float bitsFloat(uint32_t bits)
{
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}
inline float halfToFloat(uint16_t h)
{
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f)
    {
        return bitsFloat(sign | 0x7f800000u | (mantissa << 13));
    }
    if (exponent == 0)
    {
        const float magnitude = std::ldexp(static_cast<float>(mantissa), -24); // subnormal or zero
        return sign ? -magnitude : magnitude;
    }
    return bitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}
inline uint16_t floatToHalf(float f)
{
    const uint32_t bits = floatBits(f);
    const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    const float magnitude = std::fabs(f);
    if (std::isnan(f))
    {
        return static_cast<uint16_t>(sign | 0x7e00u);
    }
    if (magnitude >= 65520.f) // rounds to infinity
    {
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (magnitude < 6.103515625e-05f) // subnormal half: multiples of 2^-24, rounded to nearest even
    {
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(magnitude, 24))));
    }
    const uint32_t m = floatBits(magnitude);
    const uint32_t rounded = m + 0xfffu + ((m >> 13) & 1u); // round to nearest even at bit 13
    return static_cast<uint16_t>(sign | (((rounded >> 23) - 112) << 10) | ((rounded >> 13) & 0x3ffu));
}
inline uint16_t floatToBfloat16(float f)
{
    const uint32_t bits = floatBits(f);
    if (std::isnan(f))
    {
        return static_cast<uint16_t>((bits >> 16) | 0x40u);
    }
    return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
} // namespace rmeeto_emu

struct __half
{
    uint16_t bits;
};
struct __nv_bfloat16
{
    uint16_t bits;
};
inline float __half2float(__half h)
{
    return ::rmeeto_emu::halfToFloat(h.bits);
}
inline __half __float2half_rn(float f)
{
    return __half{::rmeeto_emu::floatToHalf(f)};
}
inline __half __float2half(float f)
{
    return __float2half_rn(f);
}
inline float __bfloat162float(__nv_bfloat16 b)
{
    return ::rmeeto_emu::bitsFloat(static_cast<uint32_t>(b.bits) << 16);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    return __nv_bfloat16{::rmeeto_emu::floatToBfloat16(f)};
}
inline __nv_bfloat16 __float2bfloat16(float f)
{
    return __float2bfloat16_rn(f);
}

#endif /* __cplusplus */
#endif /* RMEETO_CUDA_EMULATION_H */
