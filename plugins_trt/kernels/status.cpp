// Human-readable text for the C API's status codes (used by the plugins' logs and the ctypes binding).
#include "rmeeto_kernels.h"

#include <string>

namespace rmeeto
{
namespace
{
// The last launch failure of this host thread, as "cudaErrorName: text".
thread_local std::string t_lastCudaError;
} // namespace

void recordCudaError(cudaError_t error)
{
    t_lastCudaError = std::string("CUDA kernel launch failed: ") + cudaGetErrorName(error) + ": " + cudaGetErrorString(error);
}
} // namespace rmeeto

extern "C" const char* rmeeto_status_string(rmeeto_status_t status)
{
    switch (status)
    {
    case RMEETO_STATUS_SUCCESS: return "success";
    case RMEETO_STATUS_INVALID_ARGUMENT: return "invalid argument (null pointer, bad size, r or cls_index out of range)";
    case RMEETO_STATUS_UNSUPPORTED: return "unsupported configuration (d_state, dtype or size not compiled)";
    case RMEETO_STATUS_WORKSPACE_TOO_SMALL: return "workspace too small";
    case RMEETO_STATUS_CUDA_ERROR:
        return rmeeto::t_lastCudaError.empty() ? "CUDA kernel launch failed" : rmeeto::t_lastCudaError.c_str();
    }
    return "unknown status";
}

extern "C" int rmeeto_kernels_emulated(void)
{
#ifdef RMEETO_EMULATED_DEVICE
    return 1;
#else
    return 0;
#endif
}
