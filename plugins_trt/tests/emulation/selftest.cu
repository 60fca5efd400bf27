// The emulation's own checks, one small kernel each: `rmeeto_emulation_selftest CASE` runs one and
// prints its result, or the emulator's error (exit status 3). tests/test_cuda_emulation.py drives it.
#include <cstdio>
#include <cstring>
#include <vector>

namespace
{

constexpr int kThreads = 256;

// Correct: shared-memory tree down to one warp, then shuffles. Any thread order gives the same sum.
__global__ void blockSum(const float* in, float* out)
{
    __shared__ float partial[kThreads];
    partial[threadIdx.x] = in[blockIdx.x * kThreads + threadIdx.x];
    __syncthreads();
    for (unsigned stride = kThreads / 2; stride >= 32; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            partial[threadIdx.x] += partial[threadIdx.x + stride];
        }
        __syncthreads();
    }
    if (threadIdx.x < 32)
    {
        float v = partial[threadIdx.x];
        for (int m = 16; m > 0; m /= 2)
        {
            v += __shfl_xor_sync(0xffffffffu, v, m);
        }
        if (threadIdx.x == 0)
        {
            out[blockIdx.x] = v;
        }
    }
}

// Race: reads a neighbour's shared value without a barrier, so the result depends on thread order
// (and an unwritten value reads as the NaN poison).
__global__ void missingBarrier(float* out)
{
    __shared__ float value[kThreads];
    value[threadIdx.x] = static_cast<float>(threadIdx.x);
    out[threadIdx.x] = value[(threadIdx.x + 1) % kThreads];
}

// Half the block leaves before a barrier the other half waits at.
__global__ void divergentBarrier(float* out)
{
    if (threadIdx.x >= kThreads / 2)
    {
        return;
    }
    __syncthreads();
    out[threadIdx.x] = 1.f;
}

// A full-warp shuffle after half of the warp has exited.
__global__ void shuffleAfterExit(float* out)
{
    if (threadIdx.x % 32 >= 16)
    {
        return;
    }
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

// A full-warp shuffle that half of the warp reaches through another branch (a barrier).
__global__ void divergentShuffle(float* out)
{
    if (threadIdx.x % 32 < 16)
    {
        out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
    }
    __syncthreads();
}

// Lanes 0-15 shuffle among themselves with a 16-lane mask and width: legal, lanes 16-31 idle.
__global__ void halfWarpShuffle(float* out)
{
    if (threadIdx.x % 32 < 16)
    {
        out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<float>(threadIdx.x), 0, 16);
    }
}

__global__ void tooMuchShared(float* out)
{
    __shared__ float big[13 * 1024]; // 52 KiB, over the 48 KiB a block gets
    big[threadIdx.x] = 1.f;
    out[threadIdx.x] = big[threadIdx.x];
}

__global__ void noop(float*) {}

int run(const char* name)
{
    std::vector<float> in(4 * kThreads);
    std::vector<float> out(4 * kThreads, 0.f);
    for (size_t i = 0; i < in.size(); ++i)
    {
        in[i] = static_cast<float>(i % 97) * 0.25f;
    }
    int printed = 1;
    if (!std::strcmp(name, "block_sum"))
    {
        blockSum<<<4, kThreads>>>(in.data(), out.data());
        printed = 4;
    }
    else if (!std::strcmp(name, "missing_barrier"))
    {
        missingBarrier<<<1, kThreads>>>(out.data());
        printed = kThreads;
    }
    else if (!std::strcmp(name, "divergent_barrier"))
    {
        divergentBarrier<<<1, kThreads>>>(out.data());
    }
    else if (!std::strcmp(name, "shuffle_after_exit"))
    {
        shuffleAfterExit<<<1, 64>>>(out.data());
    }
    else if (!std::strcmp(name, "divergent_shuffle"))
    {
        divergentShuffle<<<1, 64>>>(out.data());
    }
    else if (!std::strcmp(name, "half_warp_shuffle"))
    {
        halfWarpShuffle<<<1, 32>>>(out.data());
        printed = 16;
    }
    else if (!std::strcmp(name, "too_much_shared"))
    {
        tooMuchShared<<<1, 32>>>(out.data());
    }
    else if (!std::strcmp(name, "block_too_large"))
    {
        noop<<<1, dim3(32, 33)>>>(out.data());
    }
    else if (!std::strcmp(name, "grid_too_large"))
    {
        noop<<<dim3(1, 65536), 32>>>(out.data());
    }
    else
    {
        std::fprintf(stderr, "unknown case %s\n", name);
        return 2;
    }
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess)
    {
        std::printf("%s: %s\n", cudaGetErrorName(error), cudaGetErrorString(error));
        return 3;
    }
    for (int i = 0; i < printed; ++i)
    {
        std::printf("%s%.9g", i ? " " : "", out[i]);
    }
    std::printf("\n");
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: rmeeto_emulation_selftest CASE\n");
        return 2;
    }
    return run(argv[1]);
}
