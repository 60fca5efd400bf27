// Entry points of librmeeto_trt_plugins.so for both ways TensorRT tools load a plugin library:
//  - dynamic: IPluginRegistry::loadLibrary / trtexec --dynamicPlugins call setLoggerFinder and
//    getCreators, then register the creators themselves;
//  - dlopen only: polygraphy --plugins, trtexec --staticPlugins, ctypes.CDLL. Nothing is called,
//    so the creators register themselves from a static initialiser.
// When the dynamic loader follows a dlopen of the same library, getCreators first withdraws the
// static registration, so each creator is registered exactly once, by the loader that asked.
// Building with RMEETO_STATIC_REGISTRATION=0 leaves only the dynamic entry points.
#include "selective_scan_plugin.h"
#include "token_merge_plugin.h"

#include <array>
#include <mutex>

namespace rmeeto::plugin
{
namespace
{

std::array<nvinfer1::IPluginCreatorInterface*, 2> const& creators()
{
    static PluginCreator<SelectiveScanPlugin> selectiveScan;
    static PluginCreator<TokenMergePlugin> tokenMerge;
    static std::array<nvinfer1::IPluginCreatorInterface*, 2> const all{&selectiveScan, &tokenMerge};
    return all;
}

class StaticRegistration
{
public:
    StaticRegistration()
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        for (size_t i = 0; registry != nullptr && i < creators().size(); ++i)
        {
            mRegistered[i] = registry->registerCreator(*creators()[i], kNamespace);
        }
    }

    void withdraw() noexcept
    {
        std::lock_guard<std::mutex> lock(mMutex);
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        for (size_t i = 0; registry != nullptr && i < creators().size(); ++i)
        {
            if (mRegistered[i])
            {
                registry->deregisterCreator(*creators()[i]);
                mRegistered[i] = false;
            }
        }
    }

private:
    std::mutex mMutex;
    std::array<bool, 2> mRegistered{};
};

#if RMEETO_STATIC_REGISTRATION
StaticRegistration gStaticRegistration;
#endif

} // namespace
} // namespace rmeeto::plugin

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    rmeeto::plugin::setLoggerFinder(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
#if RMEETO_STATIC_REGISTRATION
    rmeeto::plugin::gStaticRegistration.withdraw();
#endif
    nbCreators = static_cast<int32_t>(rmeeto::plugin::creators().size());
    return rmeeto::plugin::creators().data();
}
