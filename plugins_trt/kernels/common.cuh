// Shared device helpers of the rmeeto kernels: element conversion and dtype dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "rmeeto_kernels.h"

namespace rmeeto
{

// All arithmetic happens in fp32; activations are converted on load and store.
__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toFloat(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

// Calls fn(T{}) with T the C++ type of `dtype`; returns UNSUPPORTED for an unknown enum value.
template <typename Fn>
rmeeto_status_t dispatchDtype(rmeeto_dtype_t dtype, Fn&& fn)
{
    switch (dtype)
    {
    case RMEETO_DTYPE_FLOAT32: return fn(float{});
    case RMEETO_DTYPE_FLOAT16: return fn(__half{});
    case RMEETO_DTYPE_BFLOAT16: return fn(__nv_bfloat16{});
    }
    return RMEETO_STATUS_UNSUPPORTED;
}

// Keeps the error's name and text for rmeeto_status_string (status.cpp): cudaGetLastError clears it.
void recordCudaError(cudaError_t error);

inline rmeeto_status_t launchStatus()
{
    const cudaError_t error = cudaGetLastError();
    if (error == cudaSuccess)
    {
        return RMEETO_STATUS_SUCCESS;
    }
    recordCudaError(error);
    return RMEETO_STATUS_CUDA_ERROR;
}

inline int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

} // namespace rmeeto
