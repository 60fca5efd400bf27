// One channel of the selective scan, in fp32, compiled per instruction set (scan_channel.cpp) and picked
// at run time by scanChannelForThisCpu.
#ifndef RMEETO_CPU_SCAN_CHANNEL_H
#define RMEETO_CPU_SCAN_CHANNEL_H

namespace rmeeto_cpu
{

struct ChannelScan
{
    int dstate, seqlen;
    bool reverse, deltaSoftplus;
    const float* A;      // (dstate,) this channel's row
    const float* Bt;     // (seqlen, dstate) time-major, so a step reads dstate contiguous values
    const float* Ct;     // (seqlen, dstate)
    const float* D;      // this channel's skip weight, or nullptr
    float deltaBias;
    const float* u;      // (seqlen,)
    const float* z;      // (seqlen,) gate, or nullptr
    float* delta;        // (seqlen,) in: delta; overwritten with dt
    float* scratch;      // seqlen + 2 * dstate floats
    float* y;            // (seqlen,) out
};

using ScanChannelFn = void (*)(const ChannelScan&);

namespace baseline
{
void scanChannel(const ChannelScan& c);
}
namespace avx2
{
void scanChannel(const ChannelScan& c);
}

inline ScanChannelFn scanChannelForThisCpu()
{
#if defined(RMEETO_CPU_HAVE_AVX2_VARIANT)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return avx2::scanChannel;
#endif
    return baseline::scanChannel;
}

} // namespace rmeeto_cpu

#endif // RMEETO_CPU_SCAN_CHANNEL_H
