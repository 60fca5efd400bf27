// CPU check of the TensorRT plugin glue against the real TensorRT headers, without a GPU or
// libnvinfer: creators, attribute parsing and validation, serialisation after clone, type and
// format negotiation, build-time schedule checks, workspace sizing. Exit status = failed checks.
#include "selective_scan_plugin.h"
#include "token_merge_plugin.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{
using nvinfer1::DataType;
using rmeeto::plugin::SelectiveScanPlugin;
using rmeeto::plugin::TokenMergePlugin;

int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    gFailures += ok ? 0 : 1;
}

struct Field
{
    char const* name;
    int32_t value;
};

nvinfer1::IPluginCreatorV3One* creatorNamed(char const* name)
{
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; i < count; ++i)
    {
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(creator->getPluginName(), name) == 0)
        {
            return creator;
        }
    }
    return nullptr;
}

std::unique_ptr<nvinfer1::IPluginV3> create(char const* name, std::vector<Field> const& fields)
{
    std::vector<nvinfer1::PluginField> pluginFields;
    for (Field const& field : fields)
    {
        pluginFields.emplace_back(field.name, &field.value, nvinfer1::PluginFieldType::kINT32, 1);
    }
    nvinfer1::PluginFieldCollection const collection{static_cast<int32_t>(pluginFields.size()), pluginFields.data()};
    return std::unique_ptr<nvinfer1::IPluginV3>(
        creatorNamed(name)->createPlugin(name, &collection, nvinfer1::TensorRTPhase::kBUILD));
}

int32_t serialisedField(nvinfer1::IPluginV3& plugin, char const* name)
{
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin.getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    nvinfer1::PluginFieldCollection const* fields = runtime->getFieldsToSerialize();
    return rmeeto::plugin::findInt32Field(fields, name).value_or(-12345);
}

nvinfer1::IPluginV3OneBuild& build(nvinfer1::IPluginV3& plugin)
{
    return *static_cast<nvinfer1::IPluginV3OneBuild*>(
        plugin.getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
}

std::vector<nvinfer1::DynamicPluginTensorDesc> descs(
    std::vector<DataType> const& types, std::vector<std::vector<int64_t>> const& shapes)
{
    std::vector<nvinfer1::DynamicPluginTensorDesc> result(types.size());
    for (size_t i = 0; i < types.size(); ++i)
    {
        nvinfer1::Dims dims{};
        dims.nbDims = static_cast<int32_t>(shapes[i].size());
        for (size_t k = 0; k < shapes[i].size(); ++k)
        {
            dims.d[k] = shapes[i][k];
        }
        result[i].desc.type = types[i];
        result[i].desc.format = nvinfer1::TensorFormat::kLINEAR;
        result[i].desc.dims = dims;
        result[i].min = dims;
        result[i].opt = dims;
        result[i].max = dims;
    }
    return result;
}

void checkCreators()
{
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    check(count == 2 && creators != nullptr, "getCreators returns two creators");
    for (char const* name : {"SelectiveScan", "TokenMerge"})
    {
        nvinfer1::IPluginCreatorV3One* creator = creatorNamed(name);
        check(creator != nullptr && std::strcmp(creator->getPluginVersion(), "1") == 0
                && std::strcmp(creator->getPluginNamespace(), "rmeeto") == 0,
            std::string(name) + " creator: version 1, namespace rmeeto");
    }
    nvinfer1::PluginFieldCollection const* scanFields = creatorNamed("SelectiveScan")->getFieldNames();
    check(scanFields->nbFields == 2 && std::strcmp(scanFields->fields[0].name, "delta_softplus") == 0
            && std::strcmp(scanFields->fields[1].name, "reverse") == 0
            && scanFields->fields[0].type == nvinfer1::PluginFieldType::kINT32,
        "SelectiveScan fields: delta_softplus, reverse (int32)");
    nvinfer1::PluginFieldCollection const* mergeFields = creatorNamed("TokenMerge")->getFieldNames();
    check(mergeFields->nbFields == 2 && std::strcmp(mergeFields->fields[0].name, "r") == 0
            && std::strcmp(mergeFields->fields[1].name, "cls_index") == 0,
        "TokenMerge fields: r, cls_index (int32)");
}

void checkAttributes()
{
    auto scanDefault = create("SelectiveScan", {});
    check(scanDefault && serialisedField(*scanDefault, "delta_softplus") == 1
            && serialisedField(*scanDefault, "reverse") == 0,
        "SelectiveScan defaults delta_softplus=1 reverse=0");
    check(!create("SelectiveScan", {{"reverse", 2}}), "SelectiveScan rejects reverse=2");
    check(!create("TokenMerge", {{"cls_index", 98}}), "TokenMerge rejects a missing r");
    check(!create("TokenMerge", {{"r", -1}, {"cls_index", 98}}), "TokenMerge rejects r=-1");

    auto merge = create("TokenMerge", {{"r", 11}, {"cls_index", 98}});
    check(merge != nullptr, "TokenMerge r=11 cls_index=98 is created");
    std::unique_ptr<nvinfer1::IPluginV3> copy(merge->clone());
    merge.reset(); // the clone must not point into the original
    check(copy && serialisedField(*copy, "r") == 11 && serialisedField(*copy, "cls_index") == 98,
        "a clone serialises its own r and cls_index after the original is gone");
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(
        copy->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    check(std::strcmp(core->getPluginName(), "TokenMerge") == 0 && std::strcmp(core->getPluginNamespace(), "rmeeto") == 0,
        "core capability names the plugin");
}

void checkSelectiveScanBuild()
{
    auto plugin = create("SelectiveScan", {{"delta_softplus", 1}, {"reverse", 1}});
    nvinfer1::IPluginV3OneBuild& b = build(*plugin);
    std::vector<DataType> in(8, DataType::kHALF);
    in[SelectiveScanPlugin::kA] = in[SelectiveScanPlugin::kD] = in[SelectiveScanPlugin::kDeltaBias] = DataType::kFLOAT;
    DataType out = DataType::kFLOAT;
    check(b.getOutputDataTypes(&out, 1, in.data(), 8) == 0 && out == DataType::kHALF, "y takes u's type (fp16)");
    check(b.getOutputDataTypes(&out, 1, in.data(), 6) != 0, "6 inputs are rejected (5 or 8 only)");

    std::vector<DataType> types(in);
    types.push_back(DataType::kHALF);
    std::vector<std::vector<int64_t>> shapes{{2, 768, 197}, {2, 768, 197}, {768, 16}, {2, 16, 197}, {2, 16, 197},
        {768}, {2, 768, 197}, {768}, {2, 768, 197}};
    auto io = descs(types, shapes);
    bool allAccepted = true;
    for (int32_t pos = 0; pos < 9; ++pos)
    {
        allAccepted = allAccepted && b.supportsFormatCombination(pos, io.data(), 8, 1);
    }
    check(allAccepted, "fp16 activations with fp32 A, D, delta_bias are accepted");
    for (DataType bad : {DataType::kINT8, DataType::kINT32})
    {
        io[0].desc.type = bad;
        check(!b.supportsFormatCombination(0, io.data(), 8, 1), "u rejects a non-float type");
    }
    io[0].desc.type = DataType::kBF16;
    check(b.supportsFormatCombination(0, io.data(), 8, 1), "u accepts bf16");
    check(!b.supportsFormatCombination(1, io.data(), 8, 1), "delta must match u's type");
    io[SelectiveScanPlugin::kA].desc.type = DataType::kHALF;
    check(!b.supportsFormatCombination(SelectiveScanPlugin::kA, io.data(), 8, 1), "A must be fp32");
    io[0].desc.format = nvinfer1::TensorFormat::kCHW32;
    check(!b.supportsFormatCombination(0, io.data(), 8, 1), "non-linear formats are rejected");

    std::vector<DataType> const fiveInputs{DataType::kBF16, DataType::kBF16, DataType::kFLOAT, DataType::kBF16,
        DataType::kBF16, DataType::kBF16};
    auto withoutOptional = descs(fiveInputs, {shapes[0], shapes[1], shapes[2], shapes[3], shapes[4], shapes[0]});
    bool fiveAccepted = true;
    for (int32_t pos = 0; pos < 6; ++pos)
    {
        fiveAccepted = fiveAccepted && b.supportsFormatCombination(pos, withoutOptional.data(), 5, 1);
    }
    check(fiveAccepted, "5 inputs (no D, z, delta_bias): bf16 y at position 5 is accepted");

    auto ok = descs(types, shapes);
    check(b.configurePlugin(ok.data(), 8, ok.data() + 8, 1) == 0, "configure with d_state 16");
    auto hugeBatch = descs(types, shapes);
    hugeBatch[SelectiveScanPlugin::kU].max.d[0] = 65536;
    check(b.configurePlugin(hugeBatch.data(), 8, hugeBatch.data() + 8, 1) != 0,
        "configure rejects a profile batch of 65536 (the kernel's grid takes 65535)");
    shapes[SelectiveScanPlugin::kB][1] = 12;
    auto odd = descs(types, shapes);
    check(b.configurePlugin(odd.data(), 8, odd.data() + 8, 1) != 0, "configure rejects d_state 12 (not compiled)");
}

void checkTokenMergeBuild()
{
    auto plugin = create("TokenMerge", {{"r", 11}, {"cls_index", 98}});
    nvinfer1::IPluginV3OneBuild& b = build(*plugin);
    DataType in[3] = {DataType::kBF16, DataType::kFLOAT, DataType::kFLOAT};
    DataType out[3] = {};
    check(b.getOutputDataTypes(out, 3, in, 3) == 0 && out[0] == DataType::kBF16 && out[1] == DataType::kFLOAT
            && out[2] == DataType::kFLOAT,
        "outputs: hidden's type, fp32 residual, fp32 size");

    std::vector<DataType> types{DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kHALF,
        DataType::kFLOAT, DataType::kFLOAT};
    std::vector<std::vector<int64_t>> shapes{{8, 197, 384}, {8, 197, 384}, {8, 197, 1}, {8, 186, 384},
        {8, 186, 384}, {8, 186, 1}};
    auto io = descs(types, shapes);
    bool allAccepted = true;
    for (int32_t pos = 0; pos < 6; ++pos)
    {
        allAccepted = allAccepted && b.supportsFormatCombination(pos, io.data(), 3, 3);
    }
    check(allAccepted, "fp16 hidden with fp32 residual and size is accepted");
    io[1].desc.type = DataType::kHALF;
    check(!b.supportsFormatCombination(1, io.data(), 3, 3), "residual must be fp32");
    io[3].desc.type = DataType::kFLOAT;
    check(!b.supportsFormatCombination(3, io.data(), 3, 3), "merged hidden must keep hidden's type");

    auto ok = descs(types, shapes);
    check(b.configurePlugin(ok.data(), 3, ok.data() + 3, 3) == 0, "configure: r=11 fits 197 tokens");
    check(b.getWorkspaceSize(ok.data(), 3, ok.data() + 3, 3) == rmeeto_token_merge_workspace_size(8, 197, 11)
            && rmeeto_token_merge_workspace_size(8, 197, 11) > 0,
        "workspace = the C API's size for the largest shape");
    auto tooMany = create("TokenMerge", {{"r", 99}, {"cls_index", 98}});
    check(build(*tooMany).configurePlugin(ok.data(), 3, ok.data() + 3, 3) != 0,
        "configure rejects r=99 for 197 tokens (98 sources)");

    // The kernels' size limits fail the build, not the first inference.
    struct Oversized
    {
        int32_t dim;
        int64_t value;
        char const* what;
    };
    for (Oversized const& big : {Oversized{0, 65536, "a profile batch of 65536"},
             Oversized{1, 7000, "7000 tokens (the plan kernel's shared memory holds 6826)"},
             Oversized{2, 10241, "10241 channels (a score row holds 10240)"}})
    {
        std::vector<std::vector<int64_t>> bigShapes = shapes;
        for (int32_t i = 0; i < 3; ++i)
        {
            bigShapes[i][big.dim] = big.value;
        }
        auto io = descs(types, bigShapes);
        check(b.configurePlugin(io.data(), 3, io.data() + 3, 3) != 0, std::string("configure rejects ") + big.what);
    }
}

} // namespace

int main()
{
    checkCreators();
    checkAttributes();
    checkSelectiveScanBuild();
    checkTokenMergeBuild();
    std::printf("%d failed\n", gFailures);
    return gFailures;
}
