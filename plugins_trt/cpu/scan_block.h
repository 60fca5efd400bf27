// The selective scan of a block of kLanes channels of one sample, in fp32, compiled per instruction set
// (scan_block.cpp) and picked at run time by scanBlockForThisCpu.
#ifndef RMEETO_CPU_SCAN_BLOCK_H
#define RMEETO_CPU_SCAN_BLOCK_H

namespace rmeeto_cpu
{

// Channels scanned side by side: one AVX2 vector of fp32 (two SSE ones). Every per-channel array is
// lane-minor, [t or n][lane], so each step's work is whole vectors and y needs no horizontal sum.
constexpr int kLanes = 8;

struct ChannelBlock
{
    int dstate, seqlen;
    bool reverse, deltaSoftplus;
    const float* A;         // (dstate, kLanes)
    const float* Bt;        // (seqlen, dstate): time-major, shared by every channel of the sample
    const float* Ct;        // (seqlen, dstate)
    const float* D;         // (kLanes,) or nullptr
    const float* deltaBias; // (kLanes,)
    const float* u;         // (seqlen, kLanes)
    const float* z;         // (seqlen, kLanes) gate, or nullptr
    float* delta;           // (seqlen, kLanes) in: delta; overwritten with dt
    float* scratch;         // (seqlen + dstate) * kLanes floats
    float* y;               // (seqlen, kLanes) out
};

using ScanBlockFn = void (*)(const ChannelBlock&);

namespace baseline
{
void scanBlock(const ChannelBlock& c);
}
namespace avx2
{
void scanBlock(const ChannelBlock& c);
}

inline ScanBlockFn scanBlockForThisCpu()
{
#if defined(RMEETO_CPU_HAVE_AVX2_VARIANT)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return avx2::scanBlock;
#endif
    return baseline::scanBlock;
}

} // namespace rmeeto_cpu

#endif // RMEETO_CPU_SCAN_BLOCK_H
