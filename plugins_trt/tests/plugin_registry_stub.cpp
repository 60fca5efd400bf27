// Stand-in for libnvinfer's plugin registry, so the glue check runs without TensorRT's libraries.
// getPluginRegistry() is exported from the check executable, where the dlopened plugin library's
// undefined reference to it resolves, exactly as it would to libnvinfer's. The registry only records
// which creators are registered, so the check can see what the library's static registration did.
#include "plugin_registry_stub.h"

#include <algorithm>
#include <cstring>

namespace
{

class RecordingRegistry final : public nvinfer1::IPluginRegistry
{
public:
    bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, nvinfer1::AsciiChar const* const) noexcept override
    {
        mCreators.push_back(&creator);
        return true;
    }
    bool deregisterCreator(nvinfer1::IPluginCreatorInterface const& creator) noexcept override
    {
        auto const found = std::find(mCreators.begin(), mCreators.end(), &creator);
        if (found == mCreators.end())
        {
            return false;
        }
        mCreators.erase(found);
        return true;
    }
    nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = static_cast<int32_t>(mCreators.size());
        return mCreators.data();
    }
    nvinfer1::IPluginCreatorInterface* getCreator(nvinfer1::AsciiChar const* const name,
        nvinfer1::AsciiChar const* const version, nvinfer1::AsciiChar const* const pluginNamespace) noexcept override
    {
        for (nvinfer1::IPluginCreatorInterface* creator : mCreators)
        {
            auto* v3 = static_cast<nvinfer1::IPluginCreatorV3One*>(creator);
            if (std::strcmp(v3->getPluginName(), name) == 0 && std::strcmp(v3->getPluginVersion(), version) == 0
                && std::strcmp(v3->getPluginNamespace(), pluginNamespace) == 0)
            {
                return creator;
            }
        }
        return nullptr;
    }

    // Nothing below is used by the plugins; present because the interface requires it.
    void setErrorRecorder(nvinfer1::IErrorRecorder* const) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(nvinfer1::AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    nvinfer1::IPluginResource* acquirePluginResource(nvinfer1::AsciiChar const*, nvinfer1::IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(nvinfer1::AsciiChar const*) noexcept override
    {
        return -1;
    }
#if NV_TENSORRT_MAJOR >= 11
    nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        return getAllCreators(numCreators);
    }
#else // TensorRT 10's registry still carries the IPluginV2-era creator methods
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    bool registerCreator(nvinfer1::IPluginCreator&, nvinfer1::AsciiChar const* const) noexcept override
    {
        return false;
    }
    nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreator* getPluginCreator(nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const,
        nvinfer1::AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreator const&) noexcept override
    {
        return false;
    }
#pragma GCC diagnostic pop
#endif

private:
    std::vector<nvinfer1::IPluginCreatorInterface*> mCreators;
};

RecordingRegistry& registry()
{
    static RecordingRegistry instance;
    return instance;
}

} // namespace

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

std::vector<std::string> registeredCreators()
{
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = registry().getAllCreators(&count);
    std::vector<std::string> names;
    for (int32_t i = 0; i < count; ++i)
    {
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        names.push_back(std::string(creator->getPluginNamespace()) + "::" + creator->getPluginName() + " v"
            + creator->getPluginVersion());
    }
    return names;
}
