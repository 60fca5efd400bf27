// The selective scan of a block of channels of one sample, in fp32, compiled once per instruction set
// (scan_block.cpp, one namespace per variant) and chosen at run time (scan_variant.cpp).
#ifndef RMEETO_CPU_SCAN_BLOCK_H
#define RMEETO_CPU_SCAN_BLOCK_H

namespace rmeeto_cpu
{

// A block is `lanes` channels side by side, lanes being the variant's kLanes (one vector of fp32, or two
// SSE ones for the baseline). Every per-channel array is lane-minor, [t or n][lane], so each step's work
// is whole vectors and y needs no horizontal sum.
struct ChannelBlock
{
    int dstate, seqlen;
    bool reverse, deltaSoftplus;
    const float* A;         // (dstate, lanes)
    const float* Bt;        // (seqlen, dstate): time-major, shared by every channel of the sample
    const float* Ct;        // (seqlen, dstate)
    const float* D;         // (lanes,) or nullptr
    const float* deltaBias; // (lanes,)
    const float* u;         // (seqlen, lanes)
    const float* z;         // (seqlen, lanes) gate, or nullptr
    float* delta;           // (seqlen, lanes) in: delta; overwritten with dt
    float* scratch;         // (seqlen + dstate) * lanes floats
    float* y;               // (seqlen, lanes) out
};

// The variants; CMakeLists.txt compiles those of the target architecture.
namespace baseline // the architecture's baseline (x86-64: SSE2)
{
constexpr int kLanes = 8;
void scanBlock(const ChannelBlock& c);
} // namespace baseline
namespace avx2 // x86-64-v3: AVX2 + FMA
{
constexpr int kLanes = 8;
void scanBlock(const ChannelBlock& c);
} // namespace avx2
namespace avx512 // x86-64-v4: AVX-512 F, BW, CD, DQ, VL
{
constexpr int kLanes = 16;
void scanBlock(const ChannelBlock& c);
} // namespace avx512

struct ScanVariant
{
    const char* name;
    int lanes;
    void (*scanBlock)(const ChannelBlock&);
};

// The variant scans run on (rmeeto_cpu_scan_variant), or nullptr when RMEETO_CPU_SCAN_VARIANT names one
// that is unknown or that this CPU lacks.
const ScanVariant* scanVariant();

} // namespace rmeeto_cpu

#endif // RMEETO_CPU_SCAN_BLOCK_H
