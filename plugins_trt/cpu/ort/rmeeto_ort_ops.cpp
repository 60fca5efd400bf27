// ONNX Runtime custom-op library for domain "rmeeto": SelectiveScan and TokenMerge on the CPU kernels
// (rmeeto_cpu_kernels.h), and, when built with RMEETO_ORT_WITH_CUDA, on the CUDA kernels for the CUDA
// execution provider, launched on the stream ONNX Runtime hands the kernel.
//
// Load it with SessionOptions.register_custom_ops_library(path). The nodes keep their ONNX function
// bodies: a session without this library runs those instead. Inputs, attributes and dtypes are the
// exported nodes' (rmeeto_export/export/functions.py): activations fp32, fp16 or bf16, A, D, delta_bias,
// residual and size fp32. One op per (name, dtype, provider) is registered; ONNX Runtime picks by type.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <string>
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

void check(rmeeto_status_t status, const char* what)
{
    if (status != RMEETO_STATUS_SUCCESS)
        ORT_CXX_API_THROW(std::string(what) + " failed with rmeeto status " + std::to_string(status)
                + " (see plugins_trt/kernels/rmeeto_types.h)",
            ORT_INVALID_ARGUMENT);
}

std::vector<int64_t> shapeOf(const Ort::ConstValue& value, size_t rank, const char* name)
{
    std::vector<int64_t> shape = value.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != rank)
        ORT_CXX_API_THROW(std::string(name) + " must have rank " + std::to_string(rank), ORT_INVALID_ARGUMENT);
    return shape;
}

// ONNX Runtime's intra-op thread pool runs the CPU kernels' tasks (so the session's thread setting holds).
void ortParallelFor(void* context, rmeeto_cpu_task_fn task, void* arg, size_t count)
{
    Ort::KernelContext(static_cast<OrtKernelContext*>(context)).ParallelFor(task, count, 0, arg);
}

const void* optionalInput(const Ort::KernelContext& context, size_t index)
{
    if (index >= context.GetInputCount())
        return nullptr;
    const Ort::ConstValue value = context.GetInput(index);
    return value ? value.GetTensorRawData() : nullptr;
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

// ---- SelectiveScan(u, delta, A, B, C, D, z, delta_bias; delta_softplus, reverse) -> y ----------------

struct ScanKernel
{
    rmeeto_dtype_t dtype;
    bool onCuda;
    int64_t deltaSoftplus, reverse;

    OrtStatusPtr ComputeV2(OrtKernelContext* raw)
    {
        return guarded([&] {
            Ort::KernelContext context(raw);
            const Ort::ConstValue u = context.GetInput(0), B = context.GetInput(3);
            const std::vector<int64_t> shape = shapeOf(u, 3, "u"), bShape = shapeOf(B, 3, "B");
            const auto batch = static_cast<int32_t>(shape[0]), dim = static_cast<int32_t>(shape[1]),
                       seqlen = static_cast<int32_t>(shape[2]), dstate = static_cast<int32_t>(bShape[1]);
            Ort::UnownedValue out = context.GetOutput(0, shape);
            if (batch * dim * seqlen == 0)
                return;
            const void* in[8];
            for (size_t i = 0; i < 8; ++i)
                in[i] = optionalInput(context, i);
            void* y = out.GetTensorMutableRawData();
#ifdef RMEETO_ORT_WITH_CUDA
            if (onCuda)
            {
                check(rmeeto_selective_scan_fwd(dtype, batch, dim, dstate, seqlen, in[0], in[1],
                          static_cast<const float*>(in[2]), in[3], in[4], static_cast<const float*>(in[5]), in[6],
                          static_cast<const float*>(in[7]), static_cast<int32_t>(deltaSoftplus),
                          static_cast<int32_t>(reverse), y, static_cast<cudaStream_t>(context.GetGPUComputeStream())),
                    "rmeeto_selective_scan_fwd");
                return;
            }
#endif
            const rmeeto_cpu_threads_t threads{0, ortParallelFor, raw};
            check(rmeeto_cpu_selective_scan_fwd(dtype, batch, dim, dstate, seqlen, in[0], in[1],
                      static_cast<const float*>(in[2]), in[3], in[4], static_cast<const float*>(in[5]), in[6],
                      static_cast<const float*>(in[7]), static_cast<int32_t>(deltaSoftplus),
                      static_cast<int32_t>(reverse), y, &threads),
                "rmeeto_cpu_selective_scan_fwd");
        });
    }
};

struct ScanOp : Ort::CustomOpBase<ScanOp, ScanKernel, true>
{
    Dtype dtype;
    const char* provider;

    ScanOp(Dtype dtype, const char* provider) : dtype(dtype), provider(provider) {}

    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const
    {
        return guarded([&] {
            const Ort::ConstKernelInfo attributes(info);
            *kernel = new ScanKernel{dtype.kernel, provider == kCuda, attributes.GetAttribute<int64_t>("delta_softplus"),
                attributes.GetAttribute<int64_t>("reverse")};
        });
    }
    const char* GetName() const { return "SelectiveScan"; }
    const char* GetExecutionProviderType() const { return provider; }
    size_t GetInputTypeCount() const { return 8; }
    ONNXTensorElementDataType GetInputType(size_t index) const
    {
        const bool fp32State = index == 2 || index == 5 || index == 7; // A, D, delta_bias
        return fp32State ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : dtype.onnx;
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const
    {
        return index >= 5 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED; // D, z, delta_bias
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return dtype.onnx; }
};

// ---- TokenMerge(hidden, residual, size; r, cls_index) -> (hidden, residual, size), tokens - r --------

struct MergeKernel
{
    rmeeto_dtype_t dtype;
    bool onCuda;
    int64_t r, clsIndex;

    OrtStatusPtr ComputeV2(OrtKernelContext* raw)
    {
        return guarded([&] {
            Ort::KernelContext context(raw);
            const Ort::ConstValue hidden = context.GetInput(0), residual = context.GetInput(1), size = context.GetInput(2);
            const std::vector<int64_t> shape = shapeOf(hidden, 3, "hidden");
            const auto batch = static_cast<int32_t>(shape[0]), tokens = static_cast<int32_t>(shape[1]),
                       channels = static_cast<int32_t>(shape[2]);
            if (r < 0 || r > tokens)
                ORT_CXX_API_THROW("TokenMerge: r is outside 0.." + std::to_string(tokens), ORT_INVALID_ARGUMENT);
            const int64_t kept = tokens - r;
            Ort::UnownedValue hiddenOut = context.GetOutput(0, {batch, kept, channels});
            Ort::UnownedValue residualOut = context.GetOutput(1, {batch, kept, channels});
            Ort::UnownedValue sizeOut = context.GetOutput(2, {batch, kept, 1});
            const auto fp32In = [](const Ort::ConstValue& v) { return v.GetTensorData<float>(); };
            const auto fp32Out = [](Ort::UnownedValue& v) { return v.GetTensorMutableData<float>(); };
#ifdef RMEETO_ORT_WITH_CUDA
            if (onCuda)
            {
                const size_t bytes = rmeeto_token_merge_workspace_size(batch, tokens, static_cast<int32_t>(r));
                const Ort::ConstMemoryInfo where = hidden.GetTensorMemoryInfo();
                OrtAllocator* allocator = context.GetAllocator(*where);
                void* workspace = bytes ? allocator->Alloc(allocator, bytes) : nullptr;
                const rmeeto_status_t status = rmeeto_token_merge(dtype, batch, tokens, channels,
                    static_cast<int32_t>(r), static_cast<int32_t>(clsIndex), hidden.GetTensorRawData(),
                    fp32In(residual), fp32In(size), hiddenOut.GetTensorMutableRawData(), fp32Out(residualOut),
                    fp32Out(sizeOut), workspace, bytes, static_cast<cudaStream_t>(context.GetGPUComputeStream()));
                if (workspace) // stream-ordered: the allocator's memory is reused only by later work on it
                    allocator->Free(allocator, workspace);
                check(status, "rmeeto_token_merge");
                return;
            }
#endif
            const rmeeto_cpu_threads_t threads{0, ortParallelFor, raw};
            check(rmeeto_cpu_token_merge(dtype, batch, tokens, channels, static_cast<int32_t>(r),
                      static_cast<int32_t>(clsIndex), hidden.GetTensorRawData(), fp32In(residual), fp32In(size),
                      hiddenOut.GetTensorMutableRawData(), fp32Out(residualOut), fp32Out(sizeOut), &threads),
                "rmeeto_cpu_token_merge");
        });
    }
};

struct MergeOp : Ort::CustomOpBase<MergeOp, MergeKernel, true>
{
    Dtype dtype;
    const char* provider;

    MergeOp(Dtype dtype, const char* provider) : dtype(dtype), provider(provider) {}

    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const
    {
        return guarded([&] {
            const Ort::ConstKernelInfo attributes(info);
            *kernel = new MergeKernel{dtype.kernel, provider == kCuda, attributes.GetAttribute<int64_t>("r"),
                attributes.GetAttribute<int64_t>("cls_index")};
        });
    }
    const char* GetName() const { return "TokenMerge"; }
    const char* GetExecutionProviderType() const { return provider; }
    size_t GetInputTypeCount() const { return 3; }
    ONNXTensorElementDataType GetInputType(size_t index) const
    {
        return index == 0 ? dtype.onnx : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    size_t GetOutputTypeCount() const { return 3; }
    ONNXTensorElementDataType GetOutputType(size_t index) const { return GetInputType(index); }
};

// Live for the process: ONNX Runtime keeps pointers to the ops and the domain.
struct Registry
{
    std::vector<std::unique_ptr<ScanOp>> scans;
    std::vector<std::unique_ptr<MergeOp>> merges;
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
                scans.push_back(std::make_unique<ScanOp>(dtype, provider));
                merges.push_back(std::make_unique<MergeOp>(dtype, provider));
                domain.Add(scans.back().get());
                domain.Add(merges.back().get());
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
