/*
 * Status codes, element types and the export macro shared by the C APIs of the CUDA kernels
 * (rmeeto_kernels.h) and the CPU kernels (plugins_trt/cpu/rmeeto_cpu_kernels.h). No CUDA dependency.
 */
#ifndef RMEETO_TYPES_H
#define RMEETO_TYPES_H

#if defined(_WIN32)
#define RMEETO_API __declspec(dllexport)
#else
#define RMEETO_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rmeeto_status
{
    RMEETO_STATUS_SUCCESS = 0,
    RMEETO_STATUS_INVALID_ARGUMENT = 1, /* null pointer, non-positive size, r or cls_index out of range */
    RMEETO_STATUS_UNSUPPORTED = 2,      /* valid but not compiled: d_state, dtype, channel count */
    RMEETO_STATUS_WORKSPACE_TOO_SMALL = 3,
    RMEETO_STATUS_CUDA_ERROR = 4 /* a kernel launch failed; rmeeto_status_string names the cudaError_t */
} rmeeto_status_t;

/* Element type of the activations. Values are part of the ABI (the ctypes bindings use them). */
typedef enum rmeeto_dtype
{
    RMEETO_DTYPE_FLOAT32 = 0,
    RMEETO_DTYPE_FLOAT16 = 1,
    RMEETO_DTYPE_BFLOAT16 = 2
} rmeeto_dtype_t;

#ifdef __cplusplus
}
#endif

#endif /* RMEETO_TYPES_H */
