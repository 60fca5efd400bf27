// One R-MeeTo token merge step on the CPU, step for step as the PyTorch reference
// (rmeeto_export/merge/rmeeto.py): same metric, tie-breaks, and order of every weighted sum, so an fp32
// merge that takes the same decisions is bit-identical. Threaded over batch x sources.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_common.h"

namespace rmeeto_cpu
{
namespace
{

constexpr float kNormalizeEps = 1e-12f; // F.normalize's floor on the norm: a zero token scores 0, not NaN

template <typename T>
struct MergeArgs
{
    int32_t batch, tokens, channels, r, clsIndex;
    const T* hidden;
    const float *residual, *size;
    T* hiddenOut;
    float *residualOut, *sizeOut;

    int32_t freeTokens() const { return tokens - 1; }
    int32_t sources() const { return (freeTokens() + 1) / 2; } // even class-free positions
    int32_t destinations() const { return freeTokens() / 2; }  // odd class-free positions
    size_t token(int32_t b, int32_t freePosition) const // row of a class-free position in the full sequence
    {
        return static_cast<size_t>(b) * tokens + freePosition + (freePosition >= clsIndex ? 1 : 0);
    }
};

// metric rows (class-free order) = hidden / max(||hidden||, eps), in fp32.
template <typename T>
void normalizeToken(const MergeArgs<T>& a, int32_t b, int32_t p, float* metric)
{
    const T* x = a.hidden + a.token(b, p) * a.channels;
    float squares = 0.0f; // summed in any order, as the cosines are (see cosines)
#pragma omp simd reduction(+ : squares)
    for (int32_t c = 0; c < a.channels; ++c)
        squares += toFloat(x[c]) * toFloat(x[c]);
    const float norm = std::fmax(std::sqrt(squares), kNormalizeEps);
    for (int32_t c = 0; c < a.channels; ++c)
        metric[c] = toFloat(x[c]) / norm;
}

// The cosines of source `source` with every destination (the odd class-free rows of metric). They need not
// round as torch's matmul does (only the weighted sums below must), so this loop, most of a merge's time, is
// compiled for the widest vectors the CPU has and runs four destinations at a time: a single running sum
// would wait on its own previous addition at every step.
#if defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void cosines(const float* __restrict metric, int32_t source, int32_t destinations, int32_t channels,
    float* __restrict scores)
{
    const size_t C = static_cast<size_t>(channels);
    const float* __restrict x = metric + 2 * static_cast<size_t>(source) * C;
    const auto row = [&](int32_t j) { return metric + (2 * static_cast<size_t>(j) + 1) * C; };
    int32_t j = 0;
    for (; j + 4 <= destinations; j += 4)
    {
        const float *__restrict y0 = row(j), *__restrict y1 = row(j + 1), *__restrict y2 = row(j + 2),
                    *__restrict y3 = row(j + 3);
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (size_t c = 0; c < C; ++c)
        {
            s0 += x[c] * y0[c];
            s1 += x[c] * y1[c];
            s2 += x[c] * y2[c];
            s3 += x[c] * y3[c];
        }
        scores[j] = s0, scores[j + 1] = s1, scores[j + 2] = s2, scores[j + 3] = s3;
    }
    for (; j < destinations; ++j)
    {
        const float* __restrict y = row(j);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (size_t c = 0; c < C; ++c)
            sum += x[c] * y[c];
        scores[j] = sum;
    }
}

// A source's best destination from its cosines: the highest (NaN counts as -inf), ties to the lowest index.
void bestDestination(const float* scores, int32_t destinations, float* bestScore, int32_t* bestIndex)
{
    float best = 0.0f;
    for (int32_t j = 0; j < destinations; ++j)
    {
        const float score = std::isnan(scores[j]) ? -std::numeric_limits<float>::infinity() : scores[j];
        if (j == 0 || score > best)
        {
            best = score;
            *bestIndex = j;
        }
    }
    *bestScore = best;
}

// Merged sources: the r ranked first by (best score descending, index ascending).
std::vector<bool> topSources(const float* bestScore, int32_t sources, int32_t r)
{
    std::vector<bool> merged(sources);
    for (int32_t i = 0; i < sources; ++i)
    {
        int32_t ahead = 0;
        for (int32_t j = 0; j < sources; ++j)
            ahead += bestScore[j] > bestScore[i] || (bestScore[j] == bestScore[i] && j < i);
        merged[i] = ahead < r;
    }
    return merged;
}

// Size-weighted sums into each target in token order (index_add_'s order), then the kept tokens in
// spatial order with the class token re-inserted, each divided by its new size.
template <typename T>
void mergeSample(const MergeArgs<T>& a, int32_t b, const float* bestScore, const int32_t* bestIndex)
{
    const int32_t n = a.freeTokens(), C = a.channels;
    const std::vector<bool> merged = topSources(bestScore, a.sources(), a.r);
    std::vector<int32_t> target(n);
    for (int32_t p = 0; p < n; ++p)
        target[p] = (p % 2 == 0 && merged[p / 2]) ? 2 * bestIndex[p / 2] + 1 : p;

    const size_t width = 2 * static_cast<size_t>(C) + 1; // hidden, residual, size side by side
    std::vector<float> sums(static_cast<size_t>(n) * width, 0.0f);
    for (int32_t p = 0; p < n; ++p)
    {
        const size_t row = a.token(b, p);
        const float weight = a.size[row];
        float* into = sums.data() + static_cast<size_t>(target[p]) * width;
        for (int32_t c = 0; c < C; ++c)
            into[c] += toFloat(a.hidden[row * C + c]) * weight;
        for (int32_t c = 0; c < C; ++c)
            into[C + c] += a.residual[row * C + c] * weight;
        into[2 * C] += weight;
    }

    const int32_t kept = a.tokens - a.r;
    const int32_t newCls = static_cast<int32_t>((static_cast<int64_t>(a.clsIndex) * kept) / a.tokens);
    const size_t clsRow = static_cast<size_t>(b) * a.tokens + a.clsIndex;
    int32_t p = 0;
    for (int32_t slot = 0; slot < kept; ++slot)
    {
        const size_t out = static_cast<size_t>(b) * kept + slot;
        if (slot == newCls) // copied, so it stays bit-exact
        {
            std::memcpy(a.hiddenOut + out * C, a.hidden + clsRow * C, sizeof(T) * C);
            std::memcpy(a.residualOut + out * C, a.residual + clsRow * C, sizeof(float) * C);
            a.sizeOut[out] = a.size[clsRow];
            continue;
        }
        while (p % 2 == 0 && merged[p / 2])
            ++p;
        const float* sum = sums.data() + static_cast<size_t>(p) * width;
        const float newSize = sum[2 * C];
        for (int32_t c = 0; c < C; ++c)
            a.hiddenOut[out * C + c] = fromFloat<T>(sum[c] / newSize);
        for (int32_t c = 0; c < C; ++c)
            a.residualOut[out * C + c] = sum[C + c] / newSize;
        a.sizeOut[out] = newSize;
        ++p;
    }
}

template <typename T>
void merge(const MergeArgs<T>& a, const rmeeto_cpu_threads_t* threads)
{
    const int32_t n = a.freeTokens(), sources = a.sources();
    std::vector<float> metric(static_cast<size_t>(a.batch) * n * a.channels);
    std::vector<float> bestScore(static_cast<size_t>(a.batch) * sources);
    std::vector<int32_t> bestIndex(bestScore.size());
    const auto metricOf = [&](int32_t b) { return metric.data() + static_cast<size_t>(b) * n * a.channels; };
    parallelFor(threads, static_cast<size_t>(a.batch) * n, [&](size_t task) {
        const int32_t b = static_cast<int32_t>(task / n), p = static_cast<int32_t>(task % n);
        normalizeToken(a, b, p, metricOf(b) + static_cast<size_t>(p) * a.channels);
    });
    const int32_t destinations = a.destinations();
    std::vector<float> scores(bestScore.size() * destinations);
    parallelFor(threads, bestScore.size(), [&](size_t task) {
        float* row = scores.data() + task * destinations;
        cosines(metricOf(static_cast<int32_t>(task / sources)), static_cast<int32_t>(task % sources), destinations,
            a.channels, row);
        bestDestination(row, destinations, &bestScore[task], &bestIndex[task]);
    });
    parallelFor(threads, a.batch, [&](size_t b) {
        mergeSample(a, static_cast<int32_t>(b), &bestScore[b * sources], &bestIndex[b * sources]);
    });
}

template <typename T>
rmeeto_status_t mergeAs(int32_t batch, int32_t tokens, int32_t channels, int32_t r, int32_t clsIndex, const void* hidden,
    const float* residual, const float* size, void* hiddenOut, float* residualOut, float* sizeOut,
    const rmeeto_cpu_threads_t* threads)
{
    const MergeArgs<T> args{batch, tokens, channels, r, clsIndex, static_cast<const T*>(hidden), residual, size,
        static_cast<T*>(hiddenOut), residualOut, sizeOut};
    if (r == 0) // the op's contract: copies, bit-identical
    {
        const size_t values = static_cast<size_t>(batch) * tokens * channels;
        std::memcpy(hiddenOut, hidden, sizeof(T) * values);
        std::memcpy(residualOut, residual, sizeof(float) * values);
        std::memcpy(sizeOut, size, sizeof(float) * batch * tokens);
        return RMEETO_STATUS_SUCCESS;
    }
    merge(args, threads);
    return RMEETO_STATUS_SUCCESS;
}

} // namespace
} // namespace rmeeto_cpu

extern "C" rmeeto_status_t rmeeto_cpu_token_merge(rmeeto_dtype_t dtype, int32_t batch, int32_t tokens,
    int32_t channels, int32_t r, int32_t cls_index, const void* hidden, const float* residual, const float* size,
    void* hidden_out, float* residual_out, float* size_out, const rmeeto_cpu_threads_t* threads)
{
    using namespace rmeeto_cpu;
    const int32_t maxR = tokens / 2 < tokens - 2 ? tokens / 2 : tokens - 2;
    if (batch <= 0 || tokens <= 0 || channels <= 0 || r < 0 || r > maxR || cls_index < 0 || cls_index >= tokens
        || !hidden || !residual || !size || !hidden_out || !residual_out || !size_out)
        return RMEETO_STATUS_INVALID_ARGUMENT;
    switch (dtype)
    {
    case RMEETO_DTYPE_FLOAT32:
        return mergeAs<float>(batch, tokens, channels, r, cls_index, hidden, residual, size, hidden_out, residual_out, size_out, threads);
    case RMEETO_DTYPE_FLOAT16:
        return mergeAs<_Float16>(batch, tokens, channels, r, cls_index, hidden, residual, size, hidden_out, residual_out, size_out, threads);
    case RMEETO_DTYPE_BFLOAT16:
        return mergeAs<BFloat16>(batch, tokens, channels, r, cls_index, hidden, residual, size, hidden_out, residual_out, size_out, threads);
    }
    return RMEETO_STATUS_UNSUPPORTED;
}
