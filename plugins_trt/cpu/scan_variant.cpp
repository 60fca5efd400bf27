// Which compiled variant of the scan (scan_block.h) runs: the widest this CPU runs, or the one
// RMEETO_CPU_SCAN_VARIANT names (read once), or the one rmeeto_cpu_use_scan_variant set.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "rmeeto_cpu_kernels.h"
#include "scan_block.h"

namespace rmeeto_cpu
{
namespace
{

struct Entry
{
    ScanVariant variant; // scanBlock nullptr: not compiled for this architecture
    bool (*runsHere)();
};

bool always() { return true; }

#if defined(RMEETO_CPU_X86_VARIANTS)
// The same levels as the variants' -march (CMakeLists.txt); libgcc also checks that the OS saves the registers.
bool hasX86_64_v3() { return __builtin_cpu_supports("x86-64-v3"); }
bool hasX86_64_v4() { return __builtin_cpu_supports("x86-64-v4"); }
constexpr Entry kAvx512{{"avx512", avx512::kLanes, avx512::scanBlock}, hasX86_64_v4};
constexpr Entry kAvx2{{"avx2", avx2::kLanes, avx2::scanBlock}, hasX86_64_v3};
#else
constexpr Entry kAvx512{{"avx512", 0, nullptr}, always};
constexpr Entry kAvx2{{"avx2", 0, nullptr}, always};
#endif

// Widest first: the default is the first this CPU runs.
constexpr Entry kVariants[] = {kAvx512, kAvx2, {{"baseline", baseline::kLanes, baseline::scanBlock}, always}};

bool runsHere(const Entry& entry) { return entry.variant.scanBlock != nullptr && entry.runsHere(); }

rmeeto_status_t find(const char* name, const Entry** found)
{
    for (const Entry& entry : kVariants)
        if (std::strcmp(entry.variant.name, name) == 0)
        {
            *found = &entry;
            return runsHere(entry) ? RMEETO_STATUS_SUCCESS : RMEETO_STATUS_UNSUPPORTED;
        }
    return RMEETO_STATUS_INVALID_ARGUMENT;
}

const Entry* widest()
{
    for (const Entry& entry : kVariants)
        if (runsHere(entry))
            return &entry;
    return nullptr; // unreachable: the baseline runs everywhere
}

std::string namesRunningHere()
{
    std::string names;
    for (const Entry& entry : kVariants)
        if (runsHere(entry))
            names += (names.empty() ? "" : ", ") + std::string(entry.variant.name);
    return names;
}

// A wrong RMEETO_CPU_SCAN_VARIANT fails every scan; said once on stderr, as the scan's status cannot name it.
const Entry* fromEnvironment()
{
    const char* name = std::getenv("RMEETO_CPU_SCAN_VARIANT");
    if (name == nullptr || *name == '\0')
        return widest();
    const Entry* entry = nullptr;
    const rmeeto_status_t status = find(name, &entry);
    if (status == RMEETO_STATUS_SUCCESS)
        return entry;
    std::fprintf(stderr, "rmeeto: error: RMEETO_CPU_SCAN_VARIANT=%s: %s (this CPU runs: %s); the CPU scan fails\n",
        name, status == RMEETO_STATUS_UNSUPPORTED ? "this CPU or build lacks it" : "unknown variant",
        namesRunningHere().c_str());
    return nullptr;
}

std::atomic<const Entry*>& chosen()
{
    static std::atomic<const Entry*> entry{fromEnvironment()};
    return entry;
}

} // namespace

const ScanVariant* scanVariant()
{
    const Entry* entry = chosen().load(std::memory_order_relaxed);
    return entry ? &entry->variant : nullptr;
}

} // namespace rmeeto_cpu

extern "C" const char* rmeeto_cpu_scan_variant(void)
{
    const rmeeto_cpu::ScanVariant* variant = rmeeto_cpu::scanVariant();
    return variant ? variant->name : nullptr;
}

extern "C" rmeeto_status_t rmeeto_cpu_use_scan_variant(const char* name)
{
    using namespace rmeeto_cpu;
    const Entry* entry = widest();
    const rmeeto_status_t status = name ? find(name, &entry) : RMEETO_STATUS_SUCCESS;
    if (status == RMEETO_STATUS_SUCCESS)
        chosen().store(entry, std::memory_order_relaxed);
    return status;
}
