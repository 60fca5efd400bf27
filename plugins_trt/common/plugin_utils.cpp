#include "plugin_utils.h"

#include <atomic>
#include <cstring>

namespace rmeeto::plugin
{
namespace
{
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
} // namespace

std::optional<rmeeto_dtype_t> kernelDtype(nvinfer1::DataType type) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return RMEETO_DTYPE_FLOAT32;
    case nvinfer1::DataType::kHALF: return RMEETO_DTYPE_FLOAT16;
    case nvinfer1::DataType::kBF16: return RMEETO_DTYPE_BFLOAT16;
    default: return std::nullopt;
    }
}

bool isLinear(nvinfer1::PluginTensorDesc const& desc) noexcept
{
    return desc.format == nvinfer1::TensorFormat::kLINEAR;
}

std::vector<char const*> namesOf(std::vector<FieldSpec> const& specs)
{
    std::vector<char const*> names;
    for (FieldSpec const& spec : specs)
    {
        names.push_back(spec.name);
    }
    return names;
}

std::optional<int32_t> findInt32Field(nvinfer1::PluginFieldCollection const* fields, char const* name) noexcept
{
    for (int32_t i = 0; fields != nullptr && i < fields->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fields->fields[i];
        if (field.name != nullptr && std::strcmp(field.name, name) == 0
            && field.type == nvinfer1::PluginFieldType::kINT32 && field.length >= 1 && field.data != nullptr)
        {
            return *static_cast<int32_t const*>(field.data);
        }
    }
    return std::nullopt;
}

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logError(std::string const& message) noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, ("[rmeeto plugin] " + message).c_str());
    }
}

Int32Fields::Int32Fields(std::vector<char const*> names, std::vector<int32_t> values)
    : mNames(std::move(names))
    , mValues(std::move(values))
{
    mFields.reserve(mNames.size()); // collection() then never allocates
}

Int32Fields::Int32Fields(Int32Fields const& other)
    : mNames(other.mNames)
    , mValues(other.mValues)
{
    mFields.reserve(mNames.size());
}

nvinfer1::PluginFieldCollection const* Int32Fields::collection() noexcept
{
    mFields.clear();
    for (size_t i = 0; i < mNames.size(); ++i)
    {
        mFields.emplace_back(mNames[i], &mValues[i], nvinfer1::PluginFieldType::kINT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

FieldNames::FieldNames(std::vector<char const*> names)
{
    for (char const* name : names)
    {
        mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

} // namespace rmeeto::plugin
