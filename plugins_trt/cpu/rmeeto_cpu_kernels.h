/*
 * Plain C API of the rmeeto CPU kernels: the same two ops, arguments and dtypes as the CUDA kernels
 * (kernels/rmeeto_kernels.h), with the CUDA stream replaced by a thread setting. All tensors are dense,
 * row-major host buffers; every call returns when its outputs are written.
 */
#ifndef RMEETO_CPU_KERNELS_H
#define RMEETO_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "rmeeto_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How a call spreads its independent tasks over threads.
 * parallel_for != NULL: the caller's thread pool runs task(arg, i) for every i in [0, count) and returns
 *   when all are done (ONNX Runtime's KernelContext_ParallelFor has this shape); num_threads is ignored.
 * parallel_for == NULL: num_threads std::threads, the calling one included; <= 1 runs on the caller.
 * A NULL rmeeto_cpu_threads_t* means one thread. */
typedef void (*rmeeto_cpu_task_fn)(void* arg, size_t index);
typedef struct rmeeto_cpu_threads
{
    int32_t num_threads;
    void (*parallel_for)(void* pool, rmeeto_cpu_task_fn task, void* arg, size_t count);
    void* pool;
} rmeeto_cpu_threads_t;

/* ---- selective scan forward: rmeeto_selective_scan_fwd's math, shapes and dtypes ----------------
 * u, delta, z, out (batch, dim, seqlen) and B, C (batch, dstate, seqlen) in `dtype`; A (dim, dstate),
 * D and delta_bias (dim,) fp32; D, z and delta_bias may be NULL. State and math in fp32; any dstate.
 * Threaded over batch x channels, vectorised over channels (see the variants below). */
RMEETO_API rmeeto_status_t rmeeto_cpu_selective_scan_fwd(rmeeto_dtype_t dtype, int32_t batch, int32_t dim,
    int32_t dstate, int32_t seqlen, const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const void* z, const float* delta_bias, int32_t delta_softplus, int32_t reverse, void* out,
    const rmeeto_cpu_threads_t* threads);

/* ---- which instruction set the scan runs on --------------------------------------------------
 * The scan is compiled once per instruction set: "baseline" (any CPU of the architecture) and, on
 * x86-64, "avx2" (x86-64-v3: AVX2 + FMA, 8 channels a vector) and "avx512" (x86-64-v4: AVX-512 F, BW,
 * CD, DQ, VL, 16 channels a vector), with the same math. Scans run the widest this CPU has, unless the
 * environment variable RMEETO_CPU_SCAN_VARIANT names one (read once, at the first scan or query). */

/* The variant's name, or NULL when RMEETO_CPU_SCAN_VARIANT names one that is unknown or that this CPU
 * (or build) lacks: scans then return RMEETO_STATUS_UNSUPPORTED, and a line on stderr says why. */
RMEETO_API const char* rmeeto_cpu_scan_variant(void);

/* Later scans of this process run variant `name` (NULL: the widest this CPU has). The variant is left
 * as it was when `name` is unknown (RMEETO_STATUS_INVALID_ARGUMENT) or this CPU or build lacks it
 * (RMEETO_STATUS_UNSUPPORTED). */
RMEETO_API rmeeto_status_t rmeeto_cpu_use_scan_variant(const char* name);

/* ---- token merge (one R-MeeTo step): rmeeto_token_merge's contract, no workspace -----------------
 * hidden (batch, tokens, channels) in `dtype`; residual (batch, tokens, channels) and size (batch,
 * tokens, 1) fp32; outputs have tokens - r tokens. Decisions, tie-breaks and the order of every sum are
 * those of the PyTorch reference (rmeeto_export/merge/rmeeto.py), so the same matching gives
 * bit-identical outputs. 0 <= r <= min(tokens / 2, tokens - 2), 0 <= cls_index < tokens. */
RMEETO_API rmeeto_status_t rmeeto_cpu_token_merge(rmeeto_dtype_t dtype, int32_t batch, int32_t tokens,
    int32_t channels, int32_t r, int32_t cls_index, const void* hidden, const float* residual, const float* size,
    void* hidden_out, float* residual_out, float* size_out, const rmeeto_cpu_threads_t* threads);

#ifdef __cplusplus
}
#endif

#endif /* RMEETO_CPU_KERNELS_H */
