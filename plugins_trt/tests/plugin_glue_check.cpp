// Drives the rmeeto TensorRT plugins the way TensorRT does, on the CPU, without TensorRT's libraries:
//  1. loading: dlopens the plugin library, as polygraphy --plugins and trtexec --staticPlugins do (its
//     static initialiser must register both creators with getPluginRegistry(), here the recording
//     stand-in of plugin_registry_stub.cpp), then calls setLoggerFinder and getCreators, as
//     IPluginRegistry::loadLibrary and trtexec --dynamicPlugins do (the static registration is withdrawn);
//  2. build-time glue, through the loaded creators: attributes and validation, serialisation after
//     clone, type and format negotiation, configurePlugin's shape and schedule checks, workspace size;
//  3. with a cases file (tests/trt/test_plugin_glue.py writes it with inputs from the PyTorch
//     references), each case through TensorRT's sequence: createPlugin with the node's fields, clone,
//     getFieldsToSerialize and createPlugin again in the runtime phase, getOutputDataTypes,
//     getOutputShapes (through an expression builder), supportsFormatCombination, configurePlugin,
//     getWorkspaceSize, attachToContext, onShapeChange and enqueue on host memory, which the kernels
//     library built for the emulated device runs. Outputs are written beside the cases for the test
//     to compare with the references.
//
//     rmeeto_plugin_glue_check [<plugin library> [<cases file>]]
// The library defaults to librmeeto_trt_plugins_for_check.so beside the executable (same build).
// Exit status: the number of failed checks.
#include "plugin_registry_stub.h"
#include "selective_scan_plugin.h"
#include "token_merge_plugin.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace
{
using nvinfer1::DataType;
using rmeeto::plugin::SelectiveScanPlugin;
using rmeeto::plugin::TokenMergePlugin;

int gFailures = 0;
std::vector<nvinfer1::IPluginCreatorV3One*> gCreators; // from the loaded library's getCreators

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

nvinfer1::IPluginCreatorV3One* creatorNamed(std::string const& name)
{
    for (nvinfer1::IPluginCreatorV3One* creator : gCreators)
    {
        if (name == creator->getPluginName())
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
    for (int32_t i = 0; i < fields->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fields->fields[i];
        if (std::strcmp(field.name, name) == 0 && field.type == nvinfer1::PluginFieldType::kINT32 && field.length == 1)
        {
            return *static_cast<int32_t const*>(field.data);
        }
    }
    return -12345;
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

struct Logger final : nvinfer1::ILogger
{
    void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override
    {
        std::printf("     %s %s\n", severity == Severity::kERROR ? "logged error:" : "logged:", message);
    }
};

struct LoggerFinder final : nvinfer1::ILoggerFinder
{
    nvinfer1::ILogger* findLogger() override
    {
        return &logger;
    }
    Logger logger;
};

// Loads the library like polygraphy (dlopen only), then like IPluginRegistry::loadLibrary and trtexec
// --dynamicPlugins (setLoggerFinder, getCreators); fills gCreators. False when it cannot be loaded.
bool loadLibrary(char const* path)
{
    void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    check(library != nullptr, std::string("dlopen ") + path + (library ? "" : std::string(": ") + dlerror()));
    if (library == nullptr)
    {
        return false;
    }
    std::vector<std::string> const both{"rmeeto::SelectiveScan v1", "rmeeto::TokenMerge v1"};
    check(registeredCreators() == both, "dlopen alone registers both creators (static registration)");

    using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    check(setLoggerFinder != nullptr && getCreators != nullptr, "exports setLoggerFinder and getCreators");
    if (setLoggerFinder == nullptr || getCreators == nullptr)
    {
        return false;
    }
    static LoggerFinder finder;
    setLoggerFinder(&finder);
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    check(count == 2 && creators != nullptr, "getCreators returns two creators");
    check(registeredCreators().empty(), "getCreators withdraws the static registration (no duplicates for the loader)");
    for (int32_t i = 0; i < count; ++i)
    {
        check(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
            "creator " + std::to_string(i) + " is an IPluginCreatorV3One");
        gCreators.push_back(static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]));
    }
    return count == 2;
}

void checkCreators()
{
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

// ---- cases: TensorRT's call sequence down to enqueue ------------------------------------------------

// Constant dimension expressions, evaluated as TensorRT's builder would for static shapes.
class ConstantExpr final : public nvinfer1::IDimensionExpr
{
public:
    explicit ConstantExpr(int64_t value)
        : mValue(value)
    {
        mImpl = &mValue;
    }

private:
    struct Value final : nvinfer1::apiv::VDimensionExpr
    {
        explicit Value(int64_t v)
            : value(v)
        {
        }
        bool isConstant() const override
        {
            return true;
        }
        int64_t getConstantValue() const override
        {
            return value;
        }
        bool isSizeTensor() const override
        {
            return false;
        }
        int64_t value;
    } mValue;
};

class ExprBuilder final : public nvinfer1::IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = &mBuilder;
    }

private:
    struct Builder final : nvinfer1::apiv::VExprBuilder
    {
        nvinfer1::IDimensionExpr const* constant(int64_t value) override
        {
            exprs.push_back(std::make_unique<ConstantExpr>(value));
            return exprs.back().get();
        }
        nvinfer1::IDimensionExpr const* operation(nvinfer1::DimensionOperation op, nvinfer1::IDimensionExpr const& first,
            nvinfer1::IDimensionExpr const& second) override
        {
            int64_t const a = first.getConstantValue();
            int64_t const b = second.getConstantValue();
            using Op = nvinfer1::DimensionOperation;
            switch (op)
            {
            case Op::kSUM: return constant(a + b);
            case Op::kPROD: return constant(a * b);
            case Op::kMAX: return constant(a > b ? a : b);
            case Op::kMIN: return constant(a < b ? a : b);
            case Op::kSUB: return constant(a - b);
            case Op::kEQUAL: return constant(a == b ? 1 : 0);
            case Op::kLESS: return constant(a < b ? 1 : 0);
            case Op::kFLOOR_DIV: return constant(a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0));
            case Op::kCEIL_DIV: return constant(a / b + ((a % b != 0) && ((a < 0) == (b < 0)) ? 1 : 0));
            }
            return nullptr;
        }
        nvinfer1::IDimensionExpr const* declareSizeTensor(
            int32_t, nvinfer1::IDimensionExpr const&, nvinfer1::IDimensionExpr const&) override
        {
            return nullptr; // our plugins have no data-dependent shapes
        }
        std::vector<std::unique_ptr<ConstantExpr>> exprs;
    } mBuilder;
};

struct HostBuffer
{
    explicit HostBuffer(size_t bytes)
        : data(bytes == 0 ? nullptr : std::aligned_alloc(256, (bytes + 255) / 256 * 256))
        , size(bytes)
    {
    }
    HostBuffer(HostBuffer&& other) noexcept
        : data(other.data)
        , size(other.size)
    {
        other.data = nullptr;
    }
    HostBuffer(HostBuffer const&) = delete;
    ~HostBuffer()
    {
        std::free(data);
    }
    void* data;
    size_t size;
};

struct TypeName
{
    char const* name;
    DataType type;
    size_t bytes;
};
TypeName const kTypes[] = {{"float32", DataType::kFLOAT, 4}, {"float16", DataType::kHALF, 2}, {"bfloat16", DataType::kBF16, 2}};

TypeName const* typeNamed(std::string const& name)
{
    for (TypeName const& t : kTypes)
    {
        if (name == t.name)
        {
            return &t;
        }
    }
    return nullptr;
}

TypeName const* typeOf(DataType type)
{
    for (TypeName const& t : kTypes)
    {
        if (t.type == type)
        {
            return &t;
        }
    }
    return nullptr;
}

size_t elements(nvinfer1::Dims const& dims)
{
    size_t count = 1;
    for (int32_t k = 0; k < dims.nbDims; ++k)
    {
        count *= static_cast<size_t>(dims.d[k]);
    }
    return count;
}

struct Case
{
    std::string id;
    std::string plugin;
    std::vector<std::string> fieldNames;
    std::vector<int32_t> fieldValues;
    std::vector<nvinfer1::PluginTensorDesc> inputs;
};

// One line: <id> <plugin> <#fields> {<name> <value>} <#inputs> {<dtype> <rank> {<dim>}}
bool parseCase(std::string const& line, Case& c)
{
    std::istringstream in(line);
    size_t fields = 0;
    size_t inputs = 0;
    if (!(in >> c.id >> c.plugin >> fields))
    {
        return false;
    }
    c.fieldNames.resize(fields);
    c.fieldValues.resize(fields);
    for (size_t i = 0; i < fields; ++i)
    {
        in >> c.fieldNames[i] >> c.fieldValues[i];
    }
    in >> inputs;
    for (size_t i = 0; i < inputs && in; ++i)
    {
        std::string dtype;
        nvinfer1::PluginTensorDesc desc{};
        in >> dtype >> desc.dims.nbDims;
        for (int32_t k = 0; k < desc.dims.nbDims; ++k)
        {
            in >> desc.dims.d[k];
        }
        TypeName const* type = typeNamed(dtype);
        if (type == nullptr)
        {
            return false;
        }
        desc.type = type->type;
        desc.format = nvinfer1::TensorFormat::kLINEAR;
        desc.scale = 1.f;
        c.inputs.push_back(desc);
    }
    return static_cast<bool>(in);
}

bool readFile(std::string const& path, HostBuffer& buffer)
{
    std::ifstream file(path, std::ios::binary);
    file.read(static_cast<char*>(buffer.data), static_cast<std::streamsize>(buffer.size));
    return file.gcount() == static_cast<std::streamsize>(buffer.size) && file.peek() == EOF;
}

std::string dimsText(nvinfer1::Dims const& dims)
{
    std::string text = std::to_string(dims.nbDims);
    for (int32_t k = 0; k < dims.nbDims; ++k)
    {
        text += " " + std::to_string(dims.d[k]);
    }
    return text;
}

nvinfer1::DynamicPluginTensorDesc dynamicDesc(nvinfer1::PluginTensorDesc const& desc)
{
    nvinfer1::DynamicPluginTensorDesc result{};
    result.desc = desc;
    result.min = result.opt = result.max = desc.dims;
    return result;
}

// Returns the step that failed, empty when the case ran; writes <id>.out<k> and a results line.
std::string runCase(Case const& c, std::string const& dir, std::ofstream& results)
{
    nvinfer1::IPluginCreatorV3One* creator = creatorNamed(c.plugin);
    if (creator == nullptr)
    {
        return "no creator named " + c.plugin;
    }
    std::vector<nvinfer1::PluginField> fields;
    for (size_t i = 0; i < c.fieldNames.size(); ++i)
    {
        fields.emplace_back(c.fieldNames[i].c_str(), &c.fieldValues[i], nvinfer1::PluginFieldType::kINT32, 1);
    }
    nvinfer1::PluginFieldCollection const collection{static_cast<int32_t>(fields.size()), fields.data()};
    std::unique_ptr<nvinfer1::IPluginV3> parsed(creator->createPlugin(c.plugin.c_str(), &collection, nvinfer1::TensorRTPhase::kBUILD));
    if (!parsed)
    {
        return "createPlugin with the node's fields";
    }
    // The builder works on clones; the engine keeps getFieldsToSerialize's fields and re-creates from them.
    std::unique_ptr<nvinfer1::IPluginV3> plugin(parsed->clone());
    parsed.reset();
    if (!plugin)
    {
        return "clone";
    }
    nvinfer1::IPluginV3OneBuild& b = build(*plugin);
    for (size_t i = 0; i < c.fieldNames.size(); ++i)
    {
        if (serialisedField(*plugin, c.fieldNames[i].c_str()) != c.fieldValues[i])
        {
            return "the clone serialises " + c.fieldNames[i];
        }
    }
    auto* runtimeOfBuild = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    std::unique_ptr<nvinfer1::IPluginV3> deserialised(creator->createPlugin(
        c.plugin.c_str(), runtimeOfBuild->getFieldsToSerialize(), nvinfer1::TensorRTPhase::kRUNTIME));
    if (!deserialised)
    {
        return "createPlugin from the serialised fields (runtime phase)";
    }

    int32_t const nbInputs = static_cast<int32_t>(c.inputs.size());
    int32_t const nbOutputs = b.getNbOutputs();
    std::vector<DataType> inputTypes;
    for (nvinfer1::PluginTensorDesc const& desc : c.inputs)
    {
        inputTypes.push_back(desc.type);
    }
    std::vector<DataType> outputTypes(nbOutputs);
    if (b.getOutputDataTypes(outputTypes.data(), nbOutputs, inputTypes.data(), nbInputs) != 0)
    {
        return "getOutputDataTypes";
    }
    ExprBuilder exprs;
    std::vector<nvinfer1::DimsExprs> inputShapes(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        inputShapes[i].nbDims = c.inputs[i].dims.nbDims;
        for (int32_t k = 0; k < inputShapes[i].nbDims; ++k)
        {
            inputShapes[i].d[k] = exprs.constant(c.inputs[i].dims.d[k]);
        }
    }
    std::vector<nvinfer1::DimsExprs> outputShapes(nbOutputs);
    if (b.getOutputShapes(inputShapes.data(), nbInputs, nullptr, 0, outputShapes.data(), nbOutputs, exprs) != 0)
    {
        return "getOutputShapes";
    }
    std::vector<nvinfer1::PluginTensorDesc> outputs(nbOutputs);
    for (int32_t i = 0; i < nbOutputs; ++i)
    {
        outputs[i].dims.nbDims = outputShapes[i].nbDims;
        for (int32_t k = 0; k < outputShapes[i].nbDims; ++k)
        {
            if (outputShapes[i].d[k] == nullptr || !outputShapes[i].d[k]->isConstant())
            {
                return "getOutputShapes gives constant dimensions for constant inputs";
            }
            outputs[i].dims.d[k] = outputShapes[i].d[k]->getConstantValue();
        }
        outputs[i].type = outputTypes[i];
        outputs[i].format = nvinfer1::TensorFormat::kLINEAR;
        outputs[i].scale = 1.f;
        if (typeOf(outputTypes[i]) == nullptr)
        {
            return "getOutputDataTypes gives a float type";
        }
    }
    std::vector<nvinfer1::DynamicPluginTensorDesc> io;
    for (nvinfer1::PluginTensorDesc const& desc : c.inputs)
    {
        io.push_back(dynamicDesc(desc));
    }
    for (nvinfer1::PluginTensorDesc const& desc : outputs)
    {
        io.push_back(dynamicDesc(desc));
    }
    for (int32_t pos = 0; pos < nbInputs + nbOutputs; ++pos)
    {
        if (!b.supportsFormatCombination(pos, io.data(), nbInputs, nbOutputs))
        {
            return "supportsFormatCombination refuses position " + std::to_string(pos);
        }
    }
    if (b.configurePlugin(io.data(), nbInputs, io.data() + nbInputs, nbOutputs) != 0)
    {
        return "configurePlugin";
    }
    HostBuffer workspace(b.getWorkspaceSize(io.data(), nbInputs, io.data() + nbInputs, nbOutputs));

    std::vector<HostBuffer> inputBuffers;
    std::vector<void const*> inputPointers;
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        inputBuffers.emplace_back(elements(c.inputs[i].dims) * typeOf(c.inputs[i].type)->bytes);
        if (!readFile(dir + "/" + c.id + ".in" + std::to_string(i), inputBuffers.back()))
        {
            return "reading input " + std::to_string(i) + " (size differs from its shape)";
        }
        inputPointers.push_back(inputBuffers.back().data);
    }
    std::vector<HostBuffer> outputBuffers;
    std::vector<void*> outputPointers;
    for (int32_t i = 0; i < nbOutputs; ++i)
    {
        outputBuffers.emplace_back(elements(outputs[i].dims) * typeOf(outputs[i].type)->bytes);
        std::memset(outputBuffers.back().data, 0xff, outputBuffers.back().size); // NaN until written
        outputPointers.push_back(outputBuffers.back().data);
    }

    auto* runtimeOfDeserialised = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        deserialised->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    std::unique_ptr<nvinfer1::IPluginV3> attached(runtimeOfDeserialised->attachToContext(nullptr));
    if (!attached)
    {
        return "attachToContext";
    }
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        attached->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    if (runtime->onShapeChange(c.inputs.data(), nbInputs, outputs.data(), nbOutputs) != 0)
    {
        return "onShapeChange";
    }
    if (runtime->enqueue(c.inputs.data(), outputs.data(), inputPointers.data(), outputPointers.data(), workspace.data,
            nullptr)
        != 0)
    {
        return "enqueue";
    }
    for (int32_t i = 0; i < nbOutputs; ++i)
    {
        std::ofstream file(dir + "/" + c.id + ".out" + std::to_string(i), std::ios::binary);
        file.write(static_cast<char const*>(outputBuffers[i].data), static_cast<std::streamsize>(outputBuffers[i].size));
        results << c.id << " " << i << " " << typeOf(outputs[i].type)->name << " " << dimsText(outputs[i].dims) << "\n";
    }
    return {};
}

void runCases(std::string const& casesPath)
{
    std::ifstream cases(casesPath);
    check(cases.good(), "read " + casesPath);
    std::string const dir = casesPath.substr(0, casesPath.find_last_of('/'));
    std::ofstream results(dir + "/results.txt");
    std::string line;
    int ran = 0;
    while (std::getline(cases, line))
    {
        Case c;
        if (!parseCase(line, c))
        {
            check(false, "parse case line: " + line);
            continue;
        }
        std::string const failed = runCase(c, dir, results);
        check(failed.empty(), "case " + c.id + (failed.empty() ? "" : ": " + failed));
        ++ran;
    }
    std::printf("%d cases run\n", ran);
}

} // namespace

int main(int argc, char** argv)
{
    if (argc > 3)
    {
        std::fprintf(stderr, "usage: %s [<plugin library> [<cases file>]]\n", argv[0]);
        return 2;
    }
    std::string const self = argv[0];
    size_t const slash = self.find_last_of('/');
    std::string const beside
        = (slash == std::string::npos ? "./" : self.substr(0, slash + 1)) + "librmeeto_trt_plugins_for_check.so";
    if (loadLibrary(argc >= 2 ? argv[1] : beside.c_str()))
    {
        checkCreators();
        checkAttributes();
        checkSelectiveScanBuild();
        checkTokenMergeBuild();
        if (argc == 3)
        {
            runCases(argv[2]);
        }
    }
    std::printf("%d failed\n", gFailures);
    return gFailures;
}
