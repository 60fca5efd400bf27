// Stand-in for libnvinfer's getPluginRegistry() so the glue check links without TensorRT libraries.
// No registry: the library's static registration has nothing to register with and does nothing.
#include <NvInferRuntime.h>

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return nullptr;
}
