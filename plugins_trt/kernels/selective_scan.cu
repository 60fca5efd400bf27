// Selective scan forward (mamba-ssm selective_scan_ref semantics), channel-major layout.
//
// Work split: a block owns kChannelsPerBlock channels of one batch item; kLanesPerChannel threads
// share a channel and each keeps d_state / kLanesPerChannel states in registers, so a batch-1 Vim
// still launches dim * 4 threads. Time is walked in chunks: each chunk of u, delta, z (rows of
// `seqlen` contiguous elements) and of B, C is staged in shared memory with loads that are
// coalesced along time; softplus and SiLU are applied once per element while staging; the
// sequential recurrence then reads shared memory only and the outputs leave in coalesced rows.
#include "common.cuh"

#include <cstdint>

namespace rmeeto
{
namespace
{

constexpr int kChannelsPerBlock = 32;
constexpr int kLanesPerChannel = 4;
constexpr int kScanThreads = kChannelsPerBlock * kLanesPerChannel;
constexpr float kLog2e = 1.4426950408889634f;
// torch.nn.functional.softplus switches to the identity above this input (beta = 1).
constexpr float kSoftplusThreshold = 20.f;

template <typename T>
struct ScanArgs
{
    int32_t dim;
    int32_t seqlen;
    const T* u;
    const T* delta;
    const float* A;
    const T* B;
    const T* C;
    const float* D;
    const T* z;
    const float* deltaBias;
    bool deltaSoftplus;
    bool reverse;
    T* out;
};

// Longer chunks mean fewer barriers; the chunk shrinks for large d_state to stay in 48 KiB of
// static shared memory.
template <int kNState>
__host__ __device__ constexpr int chunkSteps()
{
    return kNState <= 16 ? 64 : 32;
}

__device__ __forceinline__ float softplus(float x)
{
    return x > kSoftplusThreshold ? x : log1pf(expf(x));
}

__device__ __forceinline__ float silu(float x)
{
    return x / (1.f + expf(-x));
}

template <typename T, int kNState>
__global__ void __launch_bounds__(kScanThreads) selectiveScanKernel(ScanArgs<T> a)
{
    constexpr int kSteps = chunkSteps<kNState>();
    constexpr int kStatesPerLane = kNState / kLanesPerChannel;
    // Odd pitch: the channels (and states) a warp reads at one step fall in distinct banks.
    constexpr int kPitch = kSteps + 1;

    __shared__ float sU[kChannelsPerBlock][kPitch];
    __shared__ float sDt[kChannelsPerBlock][kPitch];
    __shared__ float sGate[kChannelsPerBlock][kPitch];
    __shared__ float sOut[kChannelsPerBlock][kPitch];
    __shared__ float sB[kNState][kPitch];
    __shared__ float sC[kNState][kPitch];

    const int64_t batch = blockIdx.y;
    const int firstChannel = blockIdx.x * kChannelsPerBlock;
    const int channel = threadIdx.x / kLanesPerChannel;
    const int lane = threadIdx.x % kLanesPerChannel;
    const int d = firstChannel + channel;
    const bool active = d < a.dim;
    const int64_t seqlen = a.seqlen;

    // exp(dt * A) is evaluated as exp2(dt * A * log2(e)): one SFU instruction per state and step.
    float aLog2[kStatesPerLane];
    float h[kStatesPerLane];
#pragma unroll
    for (int s = 0; s < kStatesPerLane; ++s)
    {
        aLog2[s] = active ? a.A[static_cast<int64_t>(d) * kNState + lane * kStatesPerLane + s] * kLog2e : 0.f;
        h[s] = 0.f;
    }
    const float skip = (active && a.D != nullptr) ? a.D[d] : 0.f;

    const int64_t blockRows = (batch * a.dim + firstChannel) * seqlen;
    const int64_t bcRows = batch * kNState * seqlen;
    const int nChunks = static_cast<int>((seqlen + kSteps - 1) / kSteps);

    for (int k = 0; k < nChunks; ++k)
    {
        const int chunk = a.reverse ? nChunks - 1 - k : k;
        const int64_t t0 = static_cast<int64_t>(chunk) * kSteps;
        const int steps = static_cast<int>(min(static_cast<int64_t>(kSteps), seqlen - t0));

        for (int i = threadIdx.x; i < kChannelsPerBlock * kSteps; i += kScanThreads)
        {
            const int c = i / kSteps;
            const int t = i % kSteps;
            const int dc = firstChannel + c;
            float u = 0.f;
            float dt = 0.f;
            float gate = 1.f;
            if (dc < a.dim && t < steps)
            {
                const int64_t offset = blockRows + c * seqlen + t0 + t;
                u = toFloat(a.u[offset]);
                dt = toFloat(a.delta[offset]) + (a.deltaBias != nullptr ? a.deltaBias[dc] : 0.f);
                dt = a.deltaSoftplus ? softplus(dt) : dt;
                gate = a.z != nullptr ? silu(toFloat(a.z[offset])) : 1.f;
            }
            sU[c][t] = u;
            sDt[c][t] = dt;
            sGate[c][t] = gate;
        }
        for (int i = threadIdx.x; i < kNState * kSteps; i += kScanThreads)
        {
            const int n = i / kSteps;
            const int t = i % kSteps;
            const int64_t offset = bcRows + n * seqlen + t0 + t;
            sB[n][t] = t < steps ? toFloat(a.B[offset]) : 0.f;
            sC[n][t] = t < steps ? toFloat(a.C[offset]) : 0.f;
        }
        __syncthreads();

        for (int j = 0; j < steps; ++j)
        {
            const int t = a.reverse ? steps - 1 - j : j;
            const float dt = sDt[channel][t];
            const float u = sU[channel][t];
            const float dtu = dt * u;
            float y = 0.f;
#pragma unroll
            for (int s = 0; s < kStatesPerLane; ++s)
            {
                const int n = lane * kStatesPerLane + s;
                h[s] = exp2f(dt * aLog2[s]) * h[s] + dtu * sB[n][t];
                y += h[s] * sC[n][t];
            }
#pragma unroll
            for (int m = kLanesPerChannel / 2; m > 0; m /= 2)
            {
                y += __shfl_xor_sync(0xffffffffu, y, m);
            }
            if (lane == 0)
            {
                sOut[channel][t] = (y + skip * u) * sGate[channel][t];
            }
        }
        __syncthreads();

        // No barrier after the stores: the next chunk rewrites sOut only after its own staging barrier.
        for (int i = threadIdx.x; i < kChannelsPerBlock * kSteps; i += kScanThreads)
        {
            const int c = i / kSteps;
            const int t = i % kSteps;
            if (firstChannel + c < a.dim && t < steps)
            {
                a.out[blockRows + c * seqlen + t0 + t] = fromFloat<T>(sOut[c][t]);
            }
        }
    }
}

template <typename T, int kNState>
rmeeto_status_t launchScan(ScanArgs<T> const& args, int32_t batch, cudaStream_t stream)
{
    static_assert(kNState % kLanesPerChannel == 0, "states must split evenly over the lanes of a channel");
    const dim3 grid(static_cast<unsigned>(ceilDiv(args.dim, kChannelsPerBlock)), static_cast<unsigned>(batch));
    selectiveScanKernel<T, kNState><<<grid, kScanThreads, 0, stream>>>(args);
    return launchStatus();
}

} // namespace
} // namespace rmeeto

extern "C" int rmeeto_selective_scan_supports_dstate(int32_t dstate)
{
    return dstate == 8 || dstate == 16 || dstate == 32 || dstate == 64;
}

extern "C" size_t rmeeto_selective_scan_workspace_size(int32_t, int32_t, int32_t, int32_t)
{
    return 0;
}

extern "C" rmeeto_status_t rmeeto_selective_scan_check_shape(int32_t batch, int32_t dim, int32_t dstate, int32_t seqlen)
{
    if (batch <= 0 || dim <= 0 || seqlen <= 0 || batch > 65535) // batch is the grid's y dimension
    {
        return RMEETO_STATUS_INVALID_ARGUMENT;
    }
    return rmeeto_selective_scan_supports_dstate(dstate) ? RMEETO_STATUS_SUCCESS : RMEETO_STATUS_UNSUPPORTED;
}

extern "C" rmeeto_status_t rmeeto_selective_scan_fwd(rmeeto_dtype_t dtype, int32_t batch, int32_t dim,
    int32_t dstate, int32_t seqlen, const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const void* z, const float* delta_bias, int32_t delta_softplus, int32_t reverse, void* out,
    cudaStream_t stream)
{
    using namespace rmeeto;
    if (u == nullptr || delta == nullptr || A == nullptr || B == nullptr || C == nullptr || out == nullptr)
    {
        return RMEETO_STATUS_INVALID_ARGUMENT;
    }
    const rmeeto_status_t shapeStatus = rmeeto_selective_scan_check_shape(batch, dim, dstate, seqlen);
    if (shapeStatus != RMEETO_STATUS_SUCCESS)
    {
        return shapeStatus;
    }
    return dispatchDtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        const ScanArgs<T> args{dim, seqlen, static_cast<const T*>(u), static_cast<const T*>(delta), A,
            static_cast<const T*>(B), static_cast<const T*>(C), D, static_cast<const T*>(z), delta_bias,
            delta_softplus != 0, reverse != 0, static_cast<T*>(out)};
        switch (dstate)
        {
        case 8: return launchScan<T, 8>(args, batch, stream);
        case 16: return launchScan<T, 16>(args, batch, stream);
        case 32: return launchScan<T, 32>(args, batch, stream);
        default: return launchScan<T, 64>(args, batch, stream);
        }
    });
}
