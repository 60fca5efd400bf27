// ONNX Runtime custom-op library for domain "rmeeto": SelectiveScan and TokenMerge on the CPU kernels
// (rmeeto_cpu_kernels.h), and, when built with RMEETO_ORT_WITH_CUDA, on the CUDA kernels for the CUDA
// execution provider, launched on the stream ONNX Runtime hands the kernel.
//
// Load it with SessionOptions.register_custom_ops_library(path). The nodes keep their ONNX function
// bodies: a session without this library runs those instead. Each op is described once by a spec (its
// name, its tensors in node order with their type rule, its int attributes with defaults: the ops'
// contracts in rmeeto_export/contracts, which tests/contracts/test_ort_ops.py holds these specs to); one
// generic Op<Spec> reports the spec to ONNX Runtime, reads the attributes and calls the spec's compute.
// One op per (spec, activation dtype, provider) is registered; ONNX Runtime picks by type.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <array>
#include <deque>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "rmeeto_cpu_kernels.h"
#ifdef RMEETO_ORT_WITH_CUDA
#include "rmeeto_kernels.h"
#endif

namespace
{

constexpr const char* kDomain = "rmeeto";
constexpr const char* kCpu = "CPUExecutionProvider";
constexpr const char* kCuda = "CUDAExecutionProvider";

struct Dtype
{
    ONNXTensorElementDataType onnx;
    rmeeto_dtype_t kernel;
};
constexpr Dtype kDtypes[] = {
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, RMEETO_DTYPE_FLOAT32},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, RMEETO_DTYPE_FLOAT16},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, RMEETO_DTYPE_BFLOAT16},
};

// ---- What a spec states ---------------------------------------------------------------------------

enum TensorType
{
    kActivation, // the activation dtype of the op (fp32, fp16 or bf16): the first input's
    kFloat32,    // fp32 whatever the activations are
};
enum Presence
{
    kRequired,
    kOptional, // the node may leave it out (optional inputs come last, given together or not at all)
};
struct Tensor
{
    const char* name;
    TensorType type;
    Presence presence;
};

// An int attribute of the node; without a default (std::nullopt) the node must carry it.
struct Attribute
{
    const char* name;
    std::optional<int64_t> fallback;
};

// Position of the tensor or attribute called `name` in a spec's table.
template <typename Entry, size_t N>
constexpr size_t indexOf(const Entry (&table)[N], std::string_view name)
{
    for (size_t i = 0; i < N; ++i)
        if (name == table[i].name)
            return i;
    throw std::logic_error("no tensor or attribute named " + std::string(name));
}

// ---- Plumbing shared by the ops -------------------------------------------------------------------

void check(rmeeto_status_t status, const char* what)
{
    if (status != RMEETO_STATUS_SUCCESS)
        ORT_CXX_API_THROW(std::string(what) + " failed with rmeeto status " + std::to_string(status)
                + " (see plugins_trt/kernels/rmeeto_types.h)",
            ORT_INVALID_ARGUMENT);
}

// ONNX Runtime's intra-op thread pool runs the CPU kernels' tasks (so the session's thread setting holds).
void ortParallelFor(void* context, rmeeto_cpu_task_fn task, void* arg, size_t count)
{
    Ort::KernelContext(static_cast<OrtKernelContext*>(context)).ParallelFor(task, count, 0, arg);
}

// Kernels wrap their work in Ort::Status, so no C++ exception crosses into ONNX Runtime.
template <typename Work>
OrtStatusPtr guarded(Work&& work)
{
    try
    {
        work();
        return nullptr;
    }
    catch (const Ort::Exception& error)
    {
        return Ort::Status(error).release();
    }
    catch (const std::exception& error)
    {
        return Ort::Status(error.what(), ORT_RUNTIME_EXCEPTION).release();
    }
}

// The node's value of `attribute`, else its default; a required attribute the node lacks is an error.
int64_t attributeValue(const OrtApi& api, const OrtKernelInfo* info, const char* op, const Attribute& attribute)
{
    int64_t value = 0;
    const Ort::Status status(api.KernelInfoGetAttribute_int64(info, attribute.name, &value));
    if (status.IsOK())
        return value;
    if (attribute.fallback)
        return *attribute.fallback;
    ORT_CXX_API_THROW(std::string(op) + ": " + status.GetErrorMessage(), ORT_INVALID_ARGUMENT);
}

// What one node's kernel keeps: where it runs, its activation dtype and its attributes' values.
template <typename Spec>
struct Kernel
{
    rmeeto_dtype_t dtype;
    bool onCuda;
    std::array<int64_t, std::size(Spec::kAttributes)> attributes;

    OrtStatusPtr ComputeV2(OrtKernelContext* context);
};

// One run of a kernel: its tensors and attributes by the spec's names, and where to launch the work.
template <typename Spec>
class Run
{
public:
    Run(const Kernel<Spec>& kernel, OrtKernelContext* raw) : kernel_(kernel), raw_(raw), context_(raw) {}

    rmeeto_dtype_t dtype() const { return kernel_.dtype; }
    bool onCuda() const { return kernel_.onCuda; }
    int64_t attribute(std::string_view name) const { return kernel_.attributes[indexOf(Spec::kAttributes, name)]; }

    // An input's value; a null one for an optional input the node leaves out.
    Ort::ConstValue input(std::string_view name) const
    {
        const size_t index = indexOf(Spec::kInputs, name);
        return index < context_.GetInputCount() ? context_.GetInput(index) : Ort::ConstValue(nullptr);
    }
    const void* data(std::string_view name) const
    {
        const Ort::ConstValue value = input(name);
        return value ? value.GetTensorRawData() : nullptr;
    }
    const float* fp32Data(std::string_view name) const { return static_cast<const float*>(data(name)); }
    std::vector<int64_t> shape(std::string_view name, size_t rank) const
    {
        std::vector<int64_t> shape = input(name).GetTensorTypeAndShapeInfo().GetShape();
        if (shape.size() != rank)
            ORT_CXX_API_THROW(
                std::string(Spec::kName) + ": " + std::string(name) + " must have rank " + std::to_string(rank),
                ORT_INVALID_ARGUMENT);
        return shape;
    }
    Ort::UnownedValue output(std::string_view name, const std::vector<int64_t>& shape) const
    {
        return context_.GetOutput(indexOf(Spec::kOutputs, name), shape);
    }

    rmeeto_cpu_threads_t cpuThreads() const { return {0, ortParallelFor, raw_}; }
#ifdef RMEETO_ORT_WITH_CUDA
    cudaStream_t stream() const { return static_cast<cudaStream_t>(context_.GetGPUComputeStream()); }
    OrtAllocator* allocator(const Ort::ConstValue& like) const { return context_.GetAllocator(*like.GetTensorMemoryInfo()); }
#endif

private:
    const Kernel<Spec>& kernel_;
    OrtKernelContext* raw_;
    Ort::KernelContext context_;
};

template <typename Spec>
OrtStatusPtr Kernel<Spec>::ComputeV2(OrtKernelContext* context)
{
    return guarded([&] { Spec::compute(Run<Spec>(*this, context)); });
}

ONNXTensorElementDataType onnxType(const Tensor& tensor, const Dtype& activation)
{
    return tensor.type == kFloat32 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : activation.onnx;
}

OrtCustomOpInputOutputCharacteristic characteristic(const Tensor& tensor)
{
    return tensor.presence == kOptional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

// The custom op ONNX Runtime sees: `Spec`'s name, tensors and attributes for one activation dtype and provider.
template <typename Spec>
struct Op : Ort::CustomOpBase<Op<Spec>, Kernel<Spec>, true>
{
    Dtype dtype;
    const char* provider;

    Op(Dtype dtype, const char* provider) : dtype(dtype), provider(provider) {}

    OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const
    {
        return guarded([&] {
            Kernel<Spec> created{dtype.kernel, provider == kCuda, {}};
            for (size_t i = 0; i < created.attributes.size(); ++i)
                created.attributes[i] = attributeValue(api, info, Spec::kName, Spec::kAttributes[i]);
            *kernel = new Kernel<Spec>(created);
        });
    }
    const char* GetName() const { return Spec::kName; }
    const char* GetExecutionProviderType() const { return provider; }
    size_t GetInputTypeCount() const { return std::size(Spec::kInputs); }
    ONNXTensorElementDataType GetInputType(size_t index) const { return onnxType(Spec::kInputs[index], dtype); }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const
    {
        return characteristic(Spec::kInputs[index]);
    }
    size_t GetOutputTypeCount() const { return std::size(Spec::kOutputs); }
    ONNXTensorElementDataType GetOutputType(size_t index) const { return onnxType(Spec::kOutputs[index], dtype); }
    OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const
    {
        return characteristic(Spec::kOutputs[index]);
    }
};

// ---- SelectiveScan(u, delta, A, B, C, D, z, delta_bias; delta_softplus, reverse) -> y ----------------

struct SelectiveScan
{
    static constexpr const char* kName = "SelectiveScan";
    // The parameters A, D and delta_bias stay fp32 in every precision.
    static constexpr Tensor kInputs[] = {
        {"u", kActivation, kRequired},
        {"delta", kActivation, kRequired},
        {"A", kFloat32, kRequired},
        {"B", kActivation, kRequired},
        {"C", kActivation, kRequired},
        {"D", kFloat32, kOptional},
        {"z", kActivation, kOptional},
        {"delta_bias", kFloat32, kOptional},
    };
    static constexpr Tensor kOutputs[] = {
        {"y", kActivation, kRequired},
    };
    static constexpr Attribute kAttributes[] = {
        {"delta_softplus", 1},
        {"reverse", 0},
    };

    static void compute(const Run<SelectiveScan>& run)
    {
        const std::vector<int64_t> shape = run.shape("u", 3), bShape = run.shape("B", 3);
        const auto batch = static_cast<int32_t>(shape[0]), dim = static_cast<int32_t>(shape[1]),
                   seqlen = static_cast<int32_t>(shape[2]), dstate = static_cast<int32_t>(bShape[1]);
        Ort::UnownedValue out = run.output("y", shape);
        if (batch * dim * seqlen == 0)
            return;
        const auto softplus = static_cast<int32_t>(run.attribute("delta_softplus")),
                   reverse = static_cast<int32_t>(run.attribute("reverse"));
        void* y = out.GetTensorMutableRawData();
#ifdef RMEETO_ORT_WITH_CUDA
        if (run.onCuda())
            return check(rmeeto_selective_scan_fwd(run.dtype(), batch, dim, dstate, seqlen, run.data("u"),
                             run.data("delta"), run.fp32Data("A"), run.data("B"), run.data("C"), run.fp32Data("D"),
                             run.data("z"), run.fp32Data("delta_bias"), softplus, reverse, y, run.stream()),
                "rmeeto_selective_scan_fwd");
#endif
        const rmeeto_cpu_threads_t threads = run.cpuThreads();
        check(rmeeto_cpu_selective_scan_fwd(run.dtype(), batch, dim, dstate, seqlen, run.data("u"), run.data("delta"),
                  run.fp32Data("A"), run.data("B"), run.data("C"), run.fp32Data("D"), run.data("z"),
                  run.fp32Data("delta_bias"), softplus, reverse, y, &threads),
            "rmeeto_cpu_selective_scan_fwd");
    }
};

// ---- TokenMerge(hidden, residual, size; r, cls_index) -> (hidden, residual, size), tokens - r --------

struct TokenMerge
{
    static constexpr const char* kName = "TokenMerge";
    // The residual stream and the token sizes stay fp32 in every precision.
    static constexpr Tensor kInputs[] = {
        {"hidden", kActivation, kRequired},
        {"residual", kFloat32, kRequired},
        {"size", kFloat32, kRequired},
    };
    static constexpr Tensor kOutputs[] = {
        {"hidden_out", kActivation, kRequired},
        {"residual_out", kFloat32, kRequired},
        {"size_out", kFloat32, kRequired},
    };
    // Both come from the frozen merge schedule: a node without them is an export bug, so no default.
    static constexpr Attribute kAttributes[] = {
        {"r", std::nullopt},
        {"cls_index", std::nullopt},
    };

    static void compute(const Run<TokenMerge>& run)
    {
        const std::vector<int64_t> shape = run.shape("hidden", 3);
        const auto batch = static_cast<int32_t>(shape[0]), tokens = static_cast<int32_t>(shape[1]),
                   channels = static_cast<int32_t>(shape[2]);
        const int64_t r = run.attribute("r");
        if (r < 0 || r > tokens)
            ORT_CXX_API_THROW("TokenMerge: r is outside 0.." + std::to_string(tokens), ORT_INVALID_ARGUMENT);
        const auto r32 = static_cast<int32_t>(r), clsIndex = static_cast<int32_t>(run.attribute("cls_index"));
        const int64_t kept = tokens - r;
        Ort::UnownedValue hiddenOut = run.output("hidden_out", {batch, kept, channels});
        auto* residualOut = run.output("residual_out", {batch, kept, channels}).GetTensorMutableData<float>();
        auto* sizeOut = run.output("size_out", {batch, kept, 1}).GetTensorMutableData<float>();
#ifdef RMEETO_ORT_WITH_CUDA
        if (run.onCuda())
        {
            const size_t bytes = rmeeto_token_merge_workspace_size(batch, tokens, r32);
            OrtAllocator* allocator = run.allocator(run.input("hidden"));
            void* workspace = bytes ? allocator->Alloc(allocator, bytes) : nullptr;
            const rmeeto_status_t status = rmeeto_token_merge(run.dtype(), batch, tokens, channels, r32, clsIndex,
                run.data("hidden"), run.fp32Data("residual"), run.fp32Data("size"), hiddenOut.GetTensorMutableRawData(),
                residualOut, sizeOut, workspace, bytes, run.stream());
            if (workspace) // stream-ordered: the allocator's memory is reused only by later work on it
                allocator->Free(allocator, workspace);
            return check(status, "rmeeto_token_merge");
        }
#endif
        const rmeeto_cpu_threads_t threads = run.cpuThreads();
        check(rmeeto_cpu_token_merge(run.dtype(), batch, tokens, channels, r32, clsIndex, run.data("hidden"),
                  run.fp32Data("residual"), run.fp32Data("size"), hiddenOut.GetTensorMutableRawData(), residualOut,
                  sizeOut, &threads),
            "rmeeto_cpu_token_merge");
    }
};

// Live for the process: ONNX Runtime keeps pointers to the ops and the domain (a deque never moves them).
struct Registry
{
    std::deque<Op<SelectiveScan>> scans;
    std::deque<Op<TokenMerge>> merges;
    Ort::CustomOpDomain domain{kDomain};

    Registry()
    {
        std::vector<const char*> providers{kCpu};
#ifdef RMEETO_ORT_WITH_CUDA
        providers.push_back(kCuda);
#endif
        for (const char* provider : providers)
            for (const Dtype& dtype : kDtypes)
            {
                domain.Add(&scans.emplace_back(dtype, provider));
                domain.Add(&merges.emplace_back(dtype, provider));
            }
    }
};

} // namespace

extern "C" RMEETO_API OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* apiBase)
{
    const OrtApi* api = apiBase->GetApi(ORT_API_VERSION);
    if (api == nullptr) // the runtime is older than the headers this library was built with
        return apiBase->GetApi(1)->CreateStatus(ORT_FAIL,
            ("librmeeto_ort_ops needs ONNX Runtime C API version " + std::to_string(ORT_API_VERSION) + " or newer, found "
                + apiBase->GetVersionString()).c_str());
    Ort::InitApi(api);
    return guarded([&] {
        static Registry registry;
        Ort::UnownedSessionOptions(options).Add(registry.domain);
    });
}
