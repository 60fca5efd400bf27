/*
 * Plain C API of the rmeeto CUDA kernels: selective scan forward and one R-MeeTo token merge step.
 *
 * This header depends on the CUDA runtime only (for cudaStream_t), so the same kernels serve the
 * TensorRT plugins, a ctypes binding and any other host code. All tensors are dense, row-major
 * (contiguous) device buffers. No function synchronises with the host; every launch goes on `stream`.
 */
#ifndef RMEETO_KERNELS_H
#define RMEETO_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "rmeeto_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* For RMEETO_STATUS_CUDA_ERROR: the name and text of the calling thread's last launch failure
 * (valid until its next failure), since the failing call has already cleared cudaGetLastError(). */
RMEETO_API const char* rmeeto_status_string(rmeeto_status_t status);

/* 1 when built for the emulated device (plugins_trt/tests/emulation): the kernels then run on the
 * calling CPU thread, every pointer is host memory, the stream is ignored and the call returns when
 * the work is done. 0 for the CUDA build. */
RMEETO_API int rmeeto_kernels_emulated(void);

/* ---- selective scan forward -------------------------------------------------------------------
 * Per batch b, channel d, state n, step t, in fp32 (mamba-ssm selective_scan_ref semantics):
 *   dt = delta_softplus ? softplus(delta + delta_bias) : delta + delta_bias
 *   h_t = exp(dt_t * A[d,n]) * h_{t-1} + dt_t * B[b,n,t] * u[b,d,t]
 *   y_t = sum_n h_t[n] * C[b,n,t];   out = (y + D[d] * u) * SiLU(z)
 * reverse != 0 scans t = seqlen-1 .. 0 (the state runs backwards in time).
 * Shapes: u, delta, z, out (batch, dim, seqlen); B, C (batch, dstate, seqlen) in `dtype`;
 * A (dim, dstate) fp32; D, delta_bias (dim,) fp32. D, z and delta_bias may be NULL (absent).
 */
RMEETO_API int rmeeto_selective_scan_supports_dstate(int32_t dstate);

RMEETO_API size_t rmeeto_selective_scan_workspace_size(int32_t batch, int32_t dim, int32_t dstate, int32_t seqlen);

/* The shape checks rmeeto_selective_scan_fwd makes before launching, for callers that know shapes
 * early (a TensorRT plugin at build time): SUCCESS, INVALID_ARGUMENT or UNSUPPORTED. */
RMEETO_API rmeeto_status_t rmeeto_selective_scan_check_shape(int32_t batch, int32_t dim, int32_t dstate, int32_t seqlen);

RMEETO_API rmeeto_status_t rmeeto_selective_scan_fwd(rmeeto_dtype_t dtype, int32_t batch, int32_t dim,
    int32_t dstate, int32_t seqlen, const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const void* z, const float* delta_bias, int32_t delta_softplus, int32_t reverse, void* out,
    cudaStream_t stream);

/* ---- token merge (one R-MeeTo step) -------------------------------------------------------------
 * hidden (batch, tokens, channels) in `dtype`; residual (batch, tokens, channels) fp32;
 * size (batch, tokens, 1) fp32. Outputs have tokens - r tokens, same dtypes; r = 0 copies the inputs
 * bit for bit.
 * The class token at cls_index is never merged and lands at (cls_index * (tokens - r)) / tokens.
 * Constraints: 0 <= r <= rmeeto_token_merge_max_r(tokens), 0 <= cls_index < tokens.
 * `workspace` must hold rmeeto_token_merge_workspace_size(batch, tokens, r) bytes, 256-byte aligned.
 */
/* Largest r one step can merge: min(tokens / 2, tokens - 2), tokens / 2 being the number of sources. */
RMEETO_API int32_t rmeeto_token_merge_max_r(int32_t tokens);

RMEETO_API size_t rmeeto_token_merge_workspace_size(int32_t batch, int32_t tokens, int32_t r);

/* The shape and schedule checks rmeeto_token_merge makes before launching (sizes, r, cls_index, and
 * the compiled limits on tokens and channels): SUCCESS, INVALID_ARGUMENT or UNSUPPORTED. */
RMEETO_API rmeeto_status_t rmeeto_token_merge_check_shape(int32_t batch, int32_t tokens, int32_t channels, int32_t r,
    int32_t cls_index);

RMEETO_API rmeeto_status_t rmeeto_token_merge(rmeeto_dtype_t dtype, int32_t batch, int32_t tokens,
    int32_t channels, int32_t r, int32_t cls_index, const void* hidden, const float* residual, const float* size,
    void* hidden_out, float* residual_out, float* size_out, void* workspace, size_t workspace_bytes,
    cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* RMEETO_KERNELS_H */
