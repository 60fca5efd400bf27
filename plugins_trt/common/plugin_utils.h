// Helpers shared by the rmeeto TensorRT plugins: dtype mapping, attribute parsing, logging.
// Written against the IPluginV3 API common to TensorRT 10.x and 11.x; enum values are used by name only.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rmeeto_kernels.h"

namespace rmeeto::plugin
{

inline constexpr char kNamespace[] = "rmeeto";
inline constexpr char kVersion[] = "1";

// Activation types the kernels are compiled for.
std::optional<rmeeto_dtype_t> kernelDtype(nvinfer1::DataType type) noexcept;

bool isLinear(nvinfer1::PluginTensorDesc const& desc) noexcept;

// One int32 attribute of a plugin; `fallback` is used when the node omits it (none: required).
struct FieldSpec
{
    char const* name;
    std::optional<int32_t> fallback;
};

std::vector<char const*> namesOf(std::vector<FieldSpec> const& specs);

// Value of an int32 attribute in a creator's field collection; empty when absent or mistyped.
std::optional<int32_t> findInt32Field(nvinfer1::PluginFieldCollection const* fields, char const* name) noexcept;

// Reports through the logger TensorRT handed to setLoggerFinder (silent before that).
void logError(std::string const& message) noexcept;

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

// Named int32 attributes exposed as a PluginFieldCollection that points into this object, so a
// copied plugin (clone) serialises its own values, never the original's.
class Int32Fields
{
public:
    Int32Fields(std::vector<char const*> names, std::vector<int32_t> values);
    Int32Fields(Int32Fields const& other);
    Int32Fields& operator=(Int32Fields const& other) = delete;

    nvinfer1::PluginFieldCollection const* collection() noexcept;
    int32_t value(size_t index) const noexcept
    {
        return mValues[index];
    }

private:
    std::vector<char const*> mNames;
    std::vector<int32_t> mValues;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// The field list a creator advertises (names and types only): the ONNX parser forwards exactly these attributes.
class FieldNames
{
public:
    explicit FieldNames(std::vector<char const*> names);
    nvinfer1::PluginFieldCollection const* collection() const noexcept
    {
        return &mCollection;
    }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace rmeeto::plugin
