// TensorRT IPluginV3 "SelectiveScan" v1 (namespace "rmeeto"): y = selective_scan(u, delta, A, B, C, D, z, delta_bias).
#pragma once

#include "plugin_base.h"

namespace rmeeto::plugin
{

class SelectiveScanPlugin final : public PluginBase<SelectiveScanPlugin>
{
public:
    static constexpr char kName[] = "SelectiveScan";
    // Input order of the ONNX node; D, z and delta_bias come all together or not at all.
    enum Input : int32_t
    {
        kU = 0,
        kDelta,
        kA,
        kB,
        kC,
        kD,
        kZ,
        kDeltaBias,
        kInputsWithOptional
    };
    static constexpr int32_t kInputsRequired = kD;

    static std::vector<FieldSpec> fieldSpecs();
    static std::string validate(std::vector<int32_t> const& values);

    explicit SelectiveScanPlugin(Int32Fields fields);

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
    static bool validInputCount(int32_t nbInputs) noexcept;

    // enqueue() is not told how many inputs the node has; onShapeChange() is, just before.
    int32_t mNbInputs{kInputsWithOptional};
};

} // namespace rmeeto::plugin
