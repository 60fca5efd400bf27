#include "selective_scan_plugin.h"

namespace rmeeto::plugin
{
namespace
{
enum Field : size_t
{
    kDeltaSoftplus = 0,
    kReverse
};
} // namespace

std::vector<FieldSpec> SelectiveScanPlugin::fieldSpecs()
{
    // Defaults are the torch op's defaults (delta_softplus=True, reverse=False).
    return {{"delta_softplus", 1}, {"reverse", 0}};
}

std::string SelectiveScanPlugin::validate(std::vector<int32_t> const& values)
{
    for (int32_t const flag : values)
    {
        if (flag != 0 && flag != 1)
        {
            return "delta_softplus and reverse must be 0 or 1, got " + std::to_string(flag);
        }
    }
    return {};
}

SelectiveScanPlugin::SelectiveScanPlugin(Int32Fields fields)
    : PluginBase(std::move(fields))
{
}

bool SelectiveScanPlugin::validInputCount(int32_t nbInputs) noexcept
{
    return nbInputs == kInputsRequired || nbInputs == kInputsWithOptional;
}

int32_t SelectiveScanPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t SelectiveScanPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != 1)
    {
        return -1;
    }
    // The profile's largest shape against the kernel's limits: a misfit fails the build, not the first inference.
    nvinfer1::Dims const& u = in[kU].max;
    nvinfer1::Dims const& b = in[kB].max;
    if (u.nbDims != 3 || b.nbDims != 3)
    {
        return -1;
    }
    if (!rmeeto_selective_scan_supports_dstate(static_cast<int32_t>(b.d[1])))
    {
        logError("SelectiveScan: d_state " + std::to_string(b.d[1]) + " is not compiled (8, 16, 32, 64 are)");
        return -1;
    }
    rmeeto_status_t const status = rmeeto_selective_scan_check_shape(static_cast<int32_t>(u.d[0]),
        static_cast<int32_t>(u.d[1]), static_cast<int32_t>(b.d[1]), static_cast<int32_t>(u.d[2]));
    if (status != RMEETO_STATUS_SUCCESS)
    {
        logError("SelectiveScan: batch " + std::to_string(u.d[0]) + ", " + std::to_string(u.d[1]) + " channels, length "
            + std::to_string(u.d[2]) + ": " + rmeeto_status_string(status));
        return -1;
    }
    mNbInputs = nbInputs;
    return 0;
}

int32_t SelectiveScanPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || !validInputCount(nbInputs))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kU];
    return 0;
}

int32_t SelectiveScanPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbOutputs != 1 || !validInputCount(nbInputs) || inputs[kU].nbDims != 3 || inputs[kB].nbDims != 3)
    {
        return -1;
    }
    outputs[0] = inputs[kU];
    return 0;
}

bool SelectiveScanPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    if (pos >= nbInputs)
    {
        return desc.type == inOut[kU].desc.type; // y, whose index depends on how many inputs there are
    }
    switch (pos)
    {
    case kU: return kernelDtype(desc.type).has_value();
    case kA:
    case kD:
    case kDeltaBias: return desc.type == nvinfer1::DataType::kFLOAT; // parameters and state stay fp32
    default: return desc.type == inOut[kU].desc.type; // delta, B, C and z share u's type
    }
}

size_t SelectiveScanPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    nvinfer1::Dims const& u = inputs[kU].max;
    return rmeeto_selective_scan_workspace_size(static_cast<int32_t>(u.d[0]), static_cast<int32_t>(u.d[1]),
        static_cast<int32_t>(inputs[kB].max.d[1]), static_cast<int32_t>(u.d[2]));
}

int32_t SelectiveScanPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != 1)
    {
        return -1;
    }
    mNbInputs = nbInputs;
    return 0;
}

int32_t SelectiveScanPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    std::optional<rmeeto_dtype_t> const dtype = kernelDtype(inputDesc[kU].type);
    if (!dtype)
    {
        return reportStatus(RMEETO_STATUS_UNSUPPORTED);
    }
    nvinfer1::Dims const& u = inputDesc[kU].dims;
    bool const withOptional = mNbInputs == kInputsWithOptional;
    auto optionalInput = [&](int32_t index) { return withOptional ? inputs[index] : nullptr; };
    return reportStatus(rmeeto_selective_scan_fwd(*dtype, static_cast<int32_t>(u.d[0]), static_cast<int32_t>(u.d[1]),
        static_cast<int32_t>(inputDesc[kB].dims.d[1]), static_cast<int32_t>(u.d[2]), inputs[kU], inputs[kDelta],
        static_cast<float const*>(inputs[kA]), inputs[kB], inputs[kC], static_cast<float const*>(optionalInput(kD)),
        optionalInput(kZ), static_cast<float const*>(optionalInput(kDeltaBias)), field(kDeltaSoftplus),
        field(kReverse), outputs[0], stream));
}

} // namespace rmeeto::plugin
