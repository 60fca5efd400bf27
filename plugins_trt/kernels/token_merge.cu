// One R-MeeTo token merge step with static shapes and no host synchronisation.
//
// Three launches, each one pass over its data:
//   1. score:  L2 norms + cosine scores + per-source argmax, fused; the (sources x destinations)
//              score matrix never reaches memory. A block stages kSources normalised source rows in
//              shared memory and streams every destination row past them once.
//   2. plan:   one block per batch item ranks the sources, picks the top r, and writes for every
//              output row which input token it starts from and the chain of sources merged into it.
//   3. gather: one warp per output row computes the size-weighted average for hidden AND residual
//              and the new size in a single read of the contributing rows (no atomics, so the sums
//              are deterministic and always run in ascending source order).
// Token bookkeeping: the class-free sequence drops the class token; its even positions are the
// sources (source i sits at free position 2i), its odd positions the destinations (2j + 1).
#include "common.cuh"

#include <algorithm>
#include <climits>
#include <cstdint>

namespace rmeeto
{
namespace
{

constexpr int kWarpSize = 32;
constexpr int kMergeWarps = 8;
constexpr int kMergeThreads = kMergeWarps * kWarpSize;
// Dynamic shared memory stays below the 48 KiB a launch gets without an opt-in, leaving room for
// the static arrays of the score kernel.
constexpr int kDynamicSharedBudget = 40 * 1024;
constexpr int kMaxTokens = 2 * (kDynamicSharedBudget / 12); // the plan kernel keeps 12 bytes per source
// torch.nn.functional.normalize's eps: an all-zero token scores 0 instead of NaN.
constexpr float kNormEps = 1e-12f;
constexpr size_t kWorkspaceAlignment = 256;

struct MergeShape
{
    int32_t tokens;
    int32_t channels;
    int32_t r;
    int32_t clsIndex;

    __host__ __device__ int32_t freeTokens() const
    {
        return tokens - 1;
    }
    __host__ __device__ int32_t sources() const
    {
        return tokens / 2; // ceil((tokens - 1) / 2)
    }
    __host__ __device__ int32_t destinations() const
    {
        return (tokens - 1) / 2;
    }
    __host__ __device__ int32_t outTokens() const
    {
        return tokens - r;
    }
    __host__ __device__ int32_t newClsIndex() const
    {
        return static_cast<int32_t>((static_cast<int64_t>(clsIndex) * (tokens - r)) / tokens);
    }
    // Index in the full sequence of a class-free position.
    __host__ __device__ int32_t tokenOf(int32_t freePosition) const
    {
        return freePosition + (freePosition >= clsIndex ? 1 : 0);
    }
};

struct MergeWorkspace
{
    float* bestScore; // (batch, sources)
    int32_t* bestDst; // (batch, sources)
    int32_t* chainNext; // (batch, sources): next source merged into the same destination, or -1
    int32_t* outToken; // (batch, outTokens): input token each output row starts from
    int32_t* outChain; // (batch, outTokens): first source merged into that row, or -1
};

size_t alignUp(size_t bytes)
{
    return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

// One function computes both the size and the carving, so the two can never disagree.
size_t carveWorkspace(int32_t batch, MergeShape const& shape, char* base, MergeWorkspace* ws)
{
    const size_t perSource = alignUp(sizeof(int32_t) * static_cast<size_t>(batch) * shape.sources());
    const size_t perOutput = alignUp(sizeof(int32_t) * static_cast<size_t>(batch) * shape.outTokens());
    static_assert(sizeof(float) == sizeof(int32_t), "score and index arrays share one size");
    if (ws != nullptr)
    {
        ws->bestScore = reinterpret_cast<float*>(base);
        ws->bestDst = reinterpret_cast<int32_t*>(base + perSource);
        ws->chainNext = reinterpret_cast<int32_t*>(base + 2 * perSource);
        ws->outToken = reinterpret_cast<int32_t*>(base + 3 * perSource);
        ws->outChain = reinterpret_cast<int32_t*>(base + 3 * perSource + perOutput);
    }
    return 3 * perSource + 2 * perOutput;
}

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
    for (int m = kWarpSize / 2; m > 0; m /= 2)
    {
        v += __shfl_xor_sync(0xffffffffu, v, m);
    }
    return v;
}

// Score order shared by every tie-break in the op: higher score first, then lower index.
__device__ __forceinline__ bool ranksBefore(float scoreA, int32_t indexA, float scoreB, int32_t indexB)
{
    return scoreA > scoreB || (scoreA == scoreB && indexA < indexB);
}

template <typename T, int kSources>
__global__ void __launch_bounds__(kMergeThreads)
    mergeScoreKernel(MergeShape shape, const T* hidden, float* bestScore, int32_t* bestDst)
{
    extern __shared__ float sSources[]; // kSources rows of `channels`, L2-normalised
    __shared__ float sWarpScore[kMergeWarps][kSources];
    __shared__ int32_t sWarpDst[kMergeWarps][kSources];

    const int warp = threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    const int64_t batch = blockIdx.y;
    const int32_t firstSource = blockIdx.x * kSources;
    const int32_t channels = shape.channels;
    const T* x = hidden + batch * shape.tokens * channels;

    for (int k = warp; k < kSources; k += kMergeWarps)
    {
        float* row = sSources + k * channels;
        const int32_t source = firstSource + k;
        if (source >= shape.sources())
        {
            for (int c = lane; c < channels; c += kWarpSize)
            {
                row[c] = 0.f;
            }
            continue;
        }
        const T* src = x + static_cast<int64_t>(shape.tokenOf(2 * source)) * channels;
        float squares = 0.f;
        for (int c = lane; c < channels; c += kWarpSize)
        {
            const float v = toFloat(src[c]);
            row[c] = v;
            squares += v * v;
        }
        const float inverseNorm = 1.f / fmaxf(sqrtf(warpSum(squares)), kNormEps);
        for (int c = lane; c < channels; c += kWarpSize)
        {
            row[c] *= inverseNorm; // each lane rescales only the elements it wrote
        }
    }
    __syncthreads();

    float best[kSources];
    int32_t bestIndex[kSources];
#pragma unroll
    for (int k = 0; k < kSources; ++k)
    {
        best[k] = -INFINITY;
        bestIndex[k] = INT_MAX;
    }
    // Each warp visits its destinations in ascending order, so a strict '>' keeps the lowest index.
    for (int32_t j = warp; j < shape.destinations(); j += kMergeWarps)
    {
        const T* dst = x + static_cast<int64_t>(shape.tokenOf(2 * j + 1)) * channels;
        float dot[kSources];
#pragma unroll
        for (int k = 0; k < kSources; ++k)
        {
            dot[k] = 0.f;
        }
        float squares = 0.f;
        for (int c = lane; c < channels; c += kWarpSize)
        {
            const float v = toFloat(dst[c]);
            squares += v * v;
#pragma unroll
            for (int k = 0; k < kSources; ++k)
            {
                dot[k] += sSources[k * channels + c] * v;
            }
        }
        const float inverseNorm = 1.f / fmaxf(sqrtf(warpSum(squares)), kNormEps);
#pragma unroll
        for (int k = 0; k < kSources; ++k)
        {
            float score = warpSum(dot[k]) * inverseNorm;
            score = isnan(score) ? -INFINITY : score; // keeps the ranking a total order
            if (score > best[k])
            {
                best[k] = score;
                bestIndex[k] = j;
            }
        }
    }
    if (lane == 0)
    {
#pragma unroll
        for (int k = 0; k < kSources; ++k)
        {
            sWarpScore[warp][k] = best[k];
            sWarpDst[warp][k] = bestIndex[k];
        }
    }
    __syncthreads();

    const int32_t source = firstSource + threadIdx.x;
    if (threadIdx.x < kSources && source < shape.sources())
    {
        float score = sWarpScore[0][threadIdx.x];
        int32_t index = sWarpDst[0][threadIdx.x];
        for (int w = 1; w < kMergeWarps; ++w)
        {
            if (ranksBefore(sWarpScore[w][threadIdx.x], sWarpDst[w][threadIdx.x], score, index))
            {
                score = sWarpScore[w][threadIdx.x];
                index = sWarpDst[w][threadIdx.x];
            }
        }
        bestScore[batch * shape.sources() + source] = score;
        bestDst[batch * shape.sources() + source] = index == INT_MAX ? 0 : index;
    }
}

__global__ void __launch_bounds__(kMergeThreads) mergePlanKernel(MergeShape shape, MergeWorkspace ws)
{
    extern __shared__ float sPlan[];
    const int32_t nSources = shape.sources();
    float* sScore = sPlan;
    int32_t* sDst = reinterpret_cast<int32_t*>(sScore + nSources);
    int32_t* sMerged = sDst + nSources;

    const int64_t batch = blockIdx.x;
    const float* bestScore = ws.bestScore + batch * nSources;
    const int32_t* bestDst = ws.bestDst + batch * nSources;
    int32_t* chainNext = ws.chainNext + batch * nSources;
    int32_t* outToken = ws.outToken + batch * shape.outTokens();
    int32_t* outChain = ws.outChain + batch * shape.outTokens();

    for (int32_t i = threadIdx.x; i < nSources; i += blockDim.x)
    {
        sScore[i] = bestScore[i];
        sDst[i] = bestDst[i];
    }
    __syncthreads();

    // Rank by counting: O(sources^2) comparisons in shared memory, cheaper than a sort at these sizes.
    for (int32_t i = threadIdx.x; i < nSources; i += blockDim.x)
    {
        int32_t rank = 0;
        for (int32_t k = 0; k < nSources; ++k)
        {
            rank += ranksBefore(sScore[k], k, sScore[i], i) ? 1 : 0;
        }
        sMerged[i] = rank < shape.r ? 1 : 0;
    }
    __syncthreads();

    for (int32_t i = threadIdx.x; i < nSources; i += blockDim.x)
    {
        int32_t next = -1;
        for (int32_t k = i + 1; sMerged[i] && k < nSources && next < 0; ++k)
        {
            next = (sMerged[k] && sDst[k] == sDst[i]) ? k : -1;
        }
        chainNext[i] = next;
    }

    const int32_t newCls = shape.newClsIndex();
    for (int32_t p = threadIdx.x; p < shape.freeTokens(); p += blockDim.x)
    {
        const bool isSource = p % 2 == 0;
        if (isSource && sMerged[p / 2])
        {
            continue;
        }
        int32_t mergedBefore = 0; // merged sources sit at even free positions below p
        for (int32_t i = 0; 2 * i < p; ++i)
        {
            mergedBefore += sMerged[i];
        }
        int32_t head = -1;
        for (int32_t i = 0; !isSource && i < nSources && head < 0; ++i)
        {
            head = (sMerged[i] && sDst[i] == p / 2) ? i : -1;
        }
        const int32_t survivor = p - mergedBefore;
        const int32_t row = survivor + (survivor >= newCls ? 1 : 0);
        outToken[row] = shape.tokenOf(p);
        outChain[row] = head;
    }
    if (threadIdx.x == 0)
    {
        outToken[newCls] = shape.clsIndex;
        outChain[newCls] = -1;
    }
}

template <typename T>
__global__ void __launch_bounds__(kMergeThreads) mergeGatherKernel(MergeShape shape, MergeWorkspace ws,
    const T* hidden, const float* residual, const float* size, T* hiddenOut, float* residualOut, float* sizeOut)
{
    const int32_t row = blockIdx.x * kMergeWarps + threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    if (row >= shape.outTokens())
    {
        return;
    }
    const int64_t batch = blockIdx.y;
    const int64_t channels = shape.channels;
    const int64_t inRows = batch * shape.tokens;
    const int64_t outRow = batch * shape.outTokens() + row;
    const int32_t* chainNext = ws.chainNext + batch * shape.sources();
    const int32_t token = ws.outToken[outRow];
    const int32_t firstSource = ws.outChain[outRow];

    // The class token passes through untouched (weight 1, not its size), as in the reference; with
    // r = 0 every token does, so the step is an identity, bit for bit ((x * size) / size may not be x).
    const bool passThrough = token == shape.clsIndex || shape.r == 0;
    const float ownWeight = passThrough ? 1.f : size[inRows + token];
    // Destinations sit at odd free positions, source i at 2i: the terms of a row are added in
    // position order, the row's own token between the sources before and after it, like the
    // reference's index_add; products are rounded before the add (__fmul_rn: no FMA contraction),
    // so a CPU reference agrees bit for bit.
    const int32_t ownSlot = token == shape.clsIndex ? INT_MAX : (token - (token > shape.clsIndex ? 1 : 0)) / 2;
    const auto forEachTerm = [&](auto&& add) {
        bool ownAdded = false;
        for (int32_t i = firstSource; i >= 0; i = chainNext[i])
        {
            if (!ownAdded && i > ownSlot)
            {
                add(inRows + token, ownWeight);
                ownAdded = true;
            }
            const int64_t src = inRows + shape.tokenOf(2 * i);
            add(src, size[src]);
        }
        if (!ownAdded)
        {
            add(inRows + token, ownWeight);
        }
    };
    float total = 0.f;
    forEachTerm([&](int64_t, float w) { total += w; });

    for (int64_t c = lane; c < channels; c += kWarpSize)
    {
        float h = 0.f;
        float res = 0.f;
        forEachTerm([&](int64_t src, float w) {
            h += __fmul_rn(toFloat(hidden[src * channels + c]), w);
            res += __fmul_rn(residual[src * channels + c], w);
        });
        hiddenOut[outRow * channels + c] = fromFloat<T>(h / total);
        residualOut[outRow * channels + c] = res / total;
    }
    if (lane == 0)
    {
        sizeOut[outRow] = passThrough ? size[inRows + token] : total;
    }
}

template <typename T, int kSources>
rmeeto_status_t launchScore(MergeShape const& shape, int32_t batch, const T* hidden, MergeWorkspace const& ws,
    cudaStream_t stream)
{
    const dim3 grid(static_cast<unsigned>(ceilDiv(shape.sources(), kSources)), static_cast<unsigned>(batch));
    const size_t smem = sizeof(float) * kSources * shape.channels;
    mergeScoreKernel<T, kSources><<<grid, kMergeThreads, smem, stream>>>(shape, hidden, ws.bestScore, ws.bestDst);
    return launchStatus();
}

// Sources staged per score block: as many as fit the static shared-memory budget.
constexpr int32_t kWideSources = 8;
constexpr int32_t kWideSourcesMaxChannels = kDynamicSharedBudget / (kWideSources * sizeof(float));
constexpr int32_t kMaxChannels = kDynamicSharedBudget / sizeof(float);

} // namespace
} // namespace rmeeto

extern "C" int32_t rmeeto_token_merge_max_r(int32_t tokens)
{
    // Every source may merge, as long as one destination and the class token remain.
    return tokens < 2 ? 0 : std::min(tokens / 2, tokens - 2);
}

extern "C" size_t rmeeto_token_merge_workspace_size(int32_t batch, int32_t tokens, int32_t r)
{
    if (batch <= 0 || tokens <= 0 || r < 0 || r > rmeeto_token_merge_max_r(tokens))
    {
        return 0;
    }
    return rmeeto::carveWorkspace(batch, rmeeto::MergeShape{tokens, 1, r, 0}, nullptr, nullptr);
}

extern "C" rmeeto_status_t rmeeto_token_merge_check_shape(
    int32_t batch, int32_t tokens, int32_t channels, int32_t r, int32_t cls_index)
{
    using namespace rmeeto;
    if (batch <= 0 || batch > 65535 || tokens <= 0 || channels <= 0 || r < 0 || r > rmeeto_token_merge_max_r(tokens)
        || cls_index < 0 || cls_index >= tokens)
    {
        return RMEETO_STATUS_INVALID_ARGUMENT;
    }
    return tokens > kMaxTokens || channels > kMaxChannels ? RMEETO_STATUS_UNSUPPORTED : RMEETO_STATUS_SUCCESS;
}

extern "C" rmeeto_status_t rmeeto_token_merge(rmeeto_dtype_t dtype, int32_t batch, int32_t tokens,
    int32_t channels, int32_t r, int32_t cls_index, const void* hidden, const float* residual, const float* size,
    void* hidden_out, float* residual_out, float* size_out, void* workspace, size_t workspace_bytes,
    cudaStream_t stream)
{
    using namespace rmeeto;
    if (hidden == nullptr || residual == nullptr || size == nullptr || hidden_out == nullptr
        || residual_out == nullptr || size_out == nullptr || workspace == nullptr)
    {
        return RMEETO_STATUS_INVALID_ARGUMENT;
    }
    const rmeeto_status_t shapeStatus = rmeeto_token_merge_check_shape(batch, tokens, channels, r, cls_index);
    if (shapeStatus != RMEETO_STATUS_SUCCESS)
    {
        return shapeStatus;
    }
    const MergeShape shape{tokens, channels, r, cls_index};
    MergeWorkspace ws{};
    if (workspace_bytes < carveWorkspace(batch, shape, static_cast<char*>(workspace), &ws))
    {
        return RMEETO_STATUS_WORKSPACE_TOO_SMALL;
    }
    return dispatchDtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        const T* x = static_cast<const T*>(hidden);
        if (shape.sources() > 0)
        {
            const rmeeto_status_t scored = channels <= kWideSourcesMaxChannels
                ? launchScore<T, kWideSources>(shape, batch, x, ws, stream)
                : launchScore<T, 1>(shape, batch, x, ws, stream);
            if (scored != RMEETO_STATUS_SUCCESS)
            {
                return scored;
            }
        }
        const size_t planSmem = 3 * sizeof(int32_t) * static_cast<size_t>(shape.sources());
        mergePlanKernel<<<static_cast<unsigned>(batch), kMergeThreads, planSmem, stream>>>(shape, ws);
        const rmeeto_status_t planned = launchStatus();
        if (planned != RMEETO_STATUS_SUCCESS)
        {
            return planned;
        }
        const dim3 grid(static_cast<unsigned>(ceilDiv(shape.outTokens(), kMergeWarps)), static_cast<unsigned>(batch));
        mergeGatherKernel<T><<<grid, kMergeThreads, 0, stream>>>(shape, ws, x, residual, size, static_cast<T*>(hidden_out),
            residual_out, size_out);
        return launchStatus();
    });
}
