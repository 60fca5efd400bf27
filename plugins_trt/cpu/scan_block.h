// The selective scan of a block of channels of one sample, in fp32, compiled once per instruction set
// (scan_block.cpp, one namespace per variant) and chosen at run time (scan_variant.cpp).
#ifndef RMEETO_CPU_SCAN_BLOCK_H
#define RMEETO_CPU_SCAN_BLOCK_H

#include <cstddef>

#include "rmeeto_types.h"

namespace rmeeto_cpu
{

// A block is up to `lanes` consecutive channels of one sample, `lanes` being the variant's kLanes (one
// vector of fp32, or two SSE ones for the baseline). The variant moves them into lane-minor arrays,
// [t or n][lane], so each step's work is whole vectors and y needs no horizontal sum.
struct ChannelBlock
{
    rmeeto_dtype_t dtype; // of u, delta, z and y; the rest is fp32
    int channels, dstate, seqlen; // channels <= lanes
    bool reverse, deltaSoftplus;
    const void* u;          // (channels, seqlen)
    const void* delta;      // (channels, seqlen)
    const void* z;          // (channels, seqlen) gate, or nullptr
    const float* A;         // (channels, dstate)
    const float* D;         // (channels,) or nullptr
    const float* deltaBias; // (channels,) or nullptr
    const float* Bt;        // (seqlen, dstate): time-major, shared by every channel of the sample
    const float* Ct;        // (seqlen, dstate)
    float* scratch;         // scanBlockScratch(lanes, seqlen, dstate) floats
    void* y;                // (channels, seqlen) out
};

// The scratch a block of `lanes` channels needs, in fp32: dt and dt * u both as rows and lane-minor, y
// lane-minor, the states and A lane-minor (seqlen rounded up to whole lanes x lanes tiles), then u, delta,
// z and y as rows when they are not fp32.
constexpr size_t scanBlockScratch(int lanes, int seqlen, int dstate)
{
    const size_t paddedSeqlen = (static_cast<size_t>(seqlen) + lanes - 1) / lanes * lanes;
    return (5 * paddedSeqlen + 2 * static_cast<size_t>(dstate) + 4 * static_cast<size_t>(seqlen)) * lanes;
}

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
