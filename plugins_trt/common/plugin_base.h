// IPluginV3 boilerplate shared by the rmeeto plugins: capability routing, identity, cloning,
// attribute serialisation and the matching creator. A plugin supplies its name and field names
// (Derived::kName, Derived::fieldSpecs()), a constructor from Int32Fields and the build/runtime methods.
#pragma once

#include "plugin_utils.h"

#include <new>
#include <string>

namespace rmeeto::plugin
{

template <typename Derived>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PluginBase(Int32Fields fields)
        : mFields(std::move(fields))
    {
    }

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) Derived(static_cast<Derived const&>(*this));
    }

    nvinfer1::AsciiChar const* getPluginName() const noexcept override
    {
        return Derived::kName;
    }
    nvinfer1::AsciiChar const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }
    nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone(); // the kernels need no per-context resources
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return mFields.collection();
    }

protected:
    int32_t field(size_t index) const noexcept
    {
        return mFields.value(index);
    }

    // TensorRT ignores an enqueue's return value's cause, so say it in the log.
    static int32_t reportStatus(rmeeto_status_t status) noexcept
    {
        if (status == RMEETO_STATUS_SUCCESS)
        {
            return 0;
        }
        logError(std::string(Derived::kName) + " enqueue failed: " + rmeeto_status_string(status));
        return -1;
    }

private:
    Int32Fields mFields;
};

// Creator for PluginBase-derived plugins. Plugin::validate(values) returns an error message, empty if valid.
template <typename Plugin>
class PluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    PluginCreator()
        : mFieldNames(namesOf(Plugin::fieldSpecs()))
    {
    }

    nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const* /*name*/, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            std::vector<int32_t> values;
            std::vector<FieldSpec> const specs = Plugin::fieldSpecs();
            for (FieldSpec const& spec : specs)
            {
                std::optional<int32_t> const value = findInt32Field(fc, spec.name);
                if (!value && !spec.fallback)
                {
                    logError(std::string(Plugin::kName) + ": missing int32 attribute '" + spec.name + "'");
                    return nullptr;
                }
                values.push_back(value ? *value : *spec.fallback);
            }
            std::string const problem = Plugin::validate(values);
            if (!problem.empty())
            {
                logError(std::string(Plugin::kName) + ": " + problem);
                return nullptr;
            }
            return new Plugin(Int32Fields(namesOf(specs), std::move(values)));
        }
        catch (std::exception const& e)
        {
            logError(std::string(Plugin::kName) + ": " + e.what());
            return nullptr;
        }
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return mFieldNames.collection();
    }
    nvinfer1::AsciiChar const* getPluginName() const noexcept override
    {
        return Plugin::kName;
    }
    nvinfer1::AsciiChar const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }
    nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }

private:
    FieldNames mFieldNames;
};

} // namespace rmeeto::plugin
