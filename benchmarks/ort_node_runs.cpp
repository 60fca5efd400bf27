// Runs an ONNX model in ONNX Runtime (C++ API, one thread) 1 + N times on random fp32 inputs, optionally
// with librmeeto_ort_ops.so registered: the process benchmarks/scan_op_instructions.py counts under
// callgrind. Only the N runs after the warm-up one are instrumented (callgrind's client requests),
// so start-up and session creation do not count. Usage: ort_node_runs MODEL RUNS [LIBRARY]
#include <onnxruntime_cxx_api.h>
#include <valgrind/callgrind.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv)
{
    if (argc < 3)
        return 2;
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "ort_node_runs");
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1).SetInterOpNumThreads(1);
    if (argc > 3)
        options.RegisterCustomOpsLibrary(argv[3]);
    Ort::Session session(env, argv[1], options);
    Ort::AllocatorWithDefaultOptions allocator;
    std::mt19937 generator(0);
    std::normal_distribution<float> normal;
    std::vector<std::vector<float>> data;
    std::vector<Ort::Value> inputs;
    std::vector<std::string> names;
    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    for (size_t i = 0; i < session.GetInputCount(); ++i)
    {
        names.push_back(session.GetInputNameAllocated(i, allocator).get());
        std::vector<int64_t> shape = session.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
        size_t count = 1;
        for (int64_t dim : shape)
            count *= static_cast<size_t>(dim);
        std::vector<float> values(count);
        for (float& value : values)
            value = names.back() == "A" ? -std::exp(normal(generator)) : normal(generator); // Vim's A = -exp(A_log)
        data.push_back(std::move(values));
        inputs.push_back(Ort::Value::CreateTensor<float>(memory, data.back().data(), count, shape.data(), shape.size()));
    }
    std::vector<const char*> inputNames;
    for (const std::string& name : names)
        inputNames.push_back(name.c_str());
    const std::string output = session.GetOutputNameAllocated(0, allocator).get();
    const char* outputName = output.c_str();
    const auto run = [&] {
        session.Run(Ort::RunOptions{nullptr}, inputNames.data(), inputs.data(), inputs.size(), &outputName, 1);
    };
    run(); // warm-up: first-run allocations
    CALLGRIND_START_INSTRUMENTATION;
    for (int i = 0; i < std::atoi(argv[2]); ++i)
        run();
    CALLGRIND_STOP_INSTRUMENTATION;
    return 0;
}
