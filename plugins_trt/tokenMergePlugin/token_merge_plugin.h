// TensorRT IPluginV3 "TokenMerge" v1 (namespace "rmeeto"): one R-MeeTo merge step,
// (hidden, residual, size) with T tokens -> the same three tensors with T - r tokens.
#pragma once

#include "plugin_base.h"

namespace rmeeto::plugin
{

class TokenMergePlugin final : public PluginBase<TokenMergePlugin>
{
public:
    static constexpr char kName[] = "TokenMerge";
    enum Tensor : int32_t
    {
        kHidden = 0,
        kResidual,
        kSize,
        kCount
    };

    static std::vector<FieldSpec> fieldSpecs();
    static std::string validate(std::vector<int32_t> const& values);

    explicit TokenMergePlugin(Int32Fields fields);

    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    int32_t r() const noexcept;
    int32_t clsIndex() const noexcept;
};

} // namespace rmeeto::plugin
