#include "token_merge_plugin.h"

namespace rmeeto::plugin
{
namespace
{
enum Field : size_t
{
    kR = 0,
    kClsIndex
};
} // namespace

std::vector<FieldSpec> TokenMergePlugin::fieldSpecs()
{
    // Both come from the frozen schedule; a node without them is an export bug, not a default.
    return {{"r", std::nullopt}, {"cls_index", std::nullopt}};
}

std::string TokenMergePlugin::validate(std::vector<int32_t> const& values)
{
    if (values[kR] < 0 || values[kClsIndex] < 0)
    {
        return "r and cls_index must be >= 0, got r=" + std::to_string(values[kR])
            + " cls_index=" + std::to_string(values[kClsIndex]);
    }
    return {};
}

TokenMergePlugin::TokenMergePlugin(Int32Fields fields)
    : PluginBase(std::move(fields))
{
}

int32_t TokenMergePlugin::r() const noexcept
{
    return field(kR);
}

int32_t TokenMergePlugin::clsIndex() const noexcept
{
    return field(kClsIndex);
}

int32_t TokenMergePlugin::getNbOutputs() const noexcept
{
    return kCount;
}

int32_t TokenMergePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kCount || nbOutputs != kCount)
    {
        return -1;
    }
    // The profile's largest shape against the schedule (r, cls_index) and the kernels' limits on batch,
    // tokens and channels: a misfit fails the build, not the first inference.
    nvinfer1::Dims const& hidden = in[kHidden].max;
    if (hidden.nbDims != 3)
    {
        return -1;
    }
    rmeeto_status_t const status = rmeeto_token_merge_check_shape(static_cast<int32_t>(hidden.d[0]),
        static_cast<int32_t>(hidden.d[1]), static_cast<int32_t>(hidden.d[2]), r(), clsIndex());
    if (status != RMEETO_STATUS_SUCCESS)
    {
        logError("TokenMerge: batch " + std::to_string(hidden.d[0]) + ", " + std::to_string(hidden.d[1]) + " tokens, "
            + std::to_string(hidden.d[2]) + " channels, r=" + std::to_string(r()) + " cls_index="
            + std::to_string(clsIndex()) + ": " + rmeeto_status_string(status)
            + (status == RMEETO_STATUS_INVALID_ARGUMENT ? " (need r <= min(T/2, T-2), cls_index < T, batch <= 65535)" : ""));
        return -1;
    }
    return 0;
}

int32_t TokenMergePlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kCount || nbOutputs != kCount)
    {
        return -1;
    }
    outputTypes[kHidden] = inputTypes[kHidden];
    outputTypes[kResidual] = nvinfer1::DataType::kFLOAT;
    outputTypes[kSize] = nvinfer1::DataType::kFLOAT;
    return 0;
}

int32_t TokenMergePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kCount || nbOutputs != kCount)
    {
        return -1;
    }
    for (int32_t i = 0; i < kCount; ++i)
    {
        if (inputs[i].nbDims != 3)
        {
            return -1;
        }
        outputs[i] = inputs[i];
        outputs[i].d[1] = exprBuilder.operation(
            nvinfer1::DimensionOperation::kSUB, *inputs[i].d[1], *exprBuilder.constant(r()));
    }
    return 0;
}

bool TokenMergePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kCount || nbOutputs != kCount || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos % kCount) // outputs mirror the inputs: hidden, residual, size
    {
    case kHidden: return pos == kHidden ? kernelDtype(desc.type).has_value() : desc.type == inOut[kHidden].desc.type;
    default: return desc.type == nvinfer1::DataType::kFLOAT; // residual stream and sizes stay fp32
    }
}

size_t TokenMergePlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    // The layout grows with batch and tokens, so the largest profile shape bounds every run.
    nvinfer1::Dims const& hidden = inputs[kHidden].max;
    return rmeeto_token_merge_workspace_size(static_cast<int32_t>(hidden.d[0]), static_cast<int32_t>(hidden.d[1]), r());
}

int32_t TokenMergePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    return nbInputs == kCount && nbOutputs == kCount ? 0 : -1;
}

int32_t TokenMergePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    std::optional<rmeeto_dtype_t> const dtype = kernelDtype(inputDesc[kHidden].type);
    if (!dtype)
    {
        return reportStatus(RMEETO_STATUS_UNSUPPORTED);
    }
    nvinfer1::Dims const& hidden = inputDesc[kHidden].dims;
    int32_t const batch = static_cast<int32_t>(hidden.d[0]);
    int32_t const tokens = static_cast<int32_t>(hidden.d[1]);
    return reportStatus(rmeeto_token_merge(*dtype, batch, tokens, static_cast<int32_t>(hidden.d[2]), r(), clsIndex(),
        inputs[kHidden], static_cast<float const*>(inputs[kResidual]), static_cast<float const*>(inputs[kSize]),
        outputs[kHidden], static_cast<float*>(outputs[kResidual]), static_cast<float*>(outputs[kSize]), workspace,
        rmeeto_token_merge_workspace_size(batch, tokens, r()), stream));
}

} // namespace rmeeto::plugin
