// The emulated device: runs a grid's blocks one after another, each CUDA thread of a block as a
// fiber on the calling OS thread, and checks what a real GPU would reject or leave undefined.
//
// Scheduling: every runnable thread of a block runs, in the order RMEETO_EMULATION_ORDER picks
// (forward, reverse or random:SEED), until it reaches __syncthreads, a shuffle or its end. Then the
// warps whose shuffles are complete exchange values; when none are left, the block's barrier opens
// if every thread of the block waits there. Anything else (a barrier some threads never reach, a
// shuffle naming an exited or diverged lane) is an error naming the kernel, block and thread.
// Shared memory starts as 0xFF bytes (NaN in every float format), so reading it unwritten shows.
//
// An error ends the launch and becomes the launch's CUDA error: cudaGetLastError returns
// cudaErrorLaunchFailure and cudaGetErrorString the message (also printed to stderr).
#include "cuda_emulation.h"

#include <ucontext.h>

#include <algorithm>
#include <csetjmp>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define RMEETO_EMU_SANITIZE 1 // ASan follows swapcontext; a longjmp between stacks would confuse it
#else
#define RMEETO_EMU_SANITIZE 0
#endif

namespace rmeeto_emu
{
ThreadView* g_current = nullptr;

namespace
{

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned kMaxGridDim[3] = {2147483647u, 65535, 65535};
constexpr size_t kMaxSharedBytes = 48 * 1024; // per block, without the opt-in we do not emulate
constexpr size_t kStackBytes = RMEETO_EMU_SANITIZE ? 256 * 1024 : 64 * 1024;
constexpr unsigned kWarp = 32;
constexpr unsigned char kPoison = 0xff;

enum class State
{
    Ready,
    AtBarrier,
    AtShuffle,
    Exited
};

struct Fiber
{
    ThreadView view;
    unsigned linear = 0;
    State state = State::Ready;
    ucontext_t context;
    std::jmp_buf jump;
    std::unique_ptr<char[]> stack;
    bool alive = false; // its context runs fiberMain (else the next run makes a fresh one)
    // The pending shuffle, and its result once the warp has exchanged values.
    ShuffleKind kind = ShuffleKind::Index;
    unsigned mask = 0;
    uint64_t value = 0;
    int argument = 0;
    int width = 0;
};

struct SharedArray
{
    const char* key;
    std::unique_ptr<unsigned char[]> bytes;
};

struct Block
{
    const char* kernel = nullptr;
    void (*body)(void*) = nullptr;
    void* context = nullptr;
    std::deque<Fiber> fibers; // never moved once made: a ucontext_t points into itself
    unsigned threads = 0;
    size_t dynamicBytes = 0;
    std::unique_ptr<unsigned char[]> dynamicShared;
    std::vector<SharedArray> staticShared;
    size_t staticBytes = 0;
    ucontext_t schedulerContext;
    std::jmp_buf schedulerJump;
    Fiber* running = nullptr;
    std::string error;
};

Block g_block;
std::mutex g_launchMutex; // one launch at a time: g_current and g_block are process-wide
thread_local cudaError_t t_lastError = cudaSuccess;
thread_local std::string t_lastMessage;

std::string describe(Fiber const& f)
{
    char text[160];
    std::snprintf(text, sizeof text, "block (%u,%u,%u) thread (%u,%u,%u)", f.view.block.x, f.view.block.y,
        f.view.block.z, f.view.thread.x, f.view.thread.y, f.view.thread.z);
    return text;
}

// Records the first error of the launch; the scheduler stops at its next turn.
void fail(Fiber const* f, const char* format, ...)
{
    if (!g_block.error.empty())
    {
        return;
    }
    char what[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(what, sizeof what, format, args);
    va_end(args);
    g_block.error = std::string("rmeeto CUDA emulation: kernel ") + g_block.kernel + (f ? " " + describe(*f) : "")
        + ": " + what;
}

// ---- fibers: makecontext starts them; later switches use _setjmp/_longjmp, which (unlike
// swapcontext) make no signal-mask system call: 65 ns instead of 1.8 us a round trip on our VM.
__attribute__((noinline)) void toScheduler(Fiber& f) // keeps its _setjmp out of the callers
{
#if RMEETO_EMU_SANITIZE
    swapcontext(&f.context, &g_block.schedulerContext);
#else
    if (_setjmp(f.jump) == 0)
    {
        _longjmp(g_block.schedulerJump, 1);
    }
#endif
}

// A fiber runs one CUDA thread after another: when its thread exits it parks here, and the next
// block's thread of the same index starts by resuming it, with no new context (setcontext makes a
// signal-mask system call, which would cost more than a small kernel's whole thread).
void fiberMain()
{
    for (;;)
    {
        Fiber& f = *g_block.running;
        g_block.body(g_block.context);
        f.state = State::Exited;
        toScheduler(f);
    }
}

// Runs f until it next yields, entering it through its ucontext the first time.
__attribute__((noinline)) void run(Fiber& f) // keeps its _setjmp out of the callers
{
    g_block.running = &f;
    g_current = &f.view;
    const bool fresh = !f.alive;
    if (fresh)
    {
        f.alive = true;
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = nullptr;
#if RMEETO_EMU_SANITIZE
        ASAN_UNPOISON_MEMORY_REGION(f.stack.get(), kStackBytes); // frames of an abandoned thread
#endif
        makecontext(&f.context, fiberMain, 0);
    }
#if RMEETO_EMU_SANITIZE
    swapcontext(&g_block.schedulerContext, &f.context);
#else
    if (_setjmp(g_block.schedulerJump) == 0)
    {
        if (fresh)
        {
            setcontext(&f.context);
        }
        _longjmp(f.jump, 1);
    }
#endif
    g_current = nullptr;
}

// Once per fiber: every block's makecontext reuses the stack and the context.
__attribute__((noinline)) void allocate(Fiber& f) // getcontext returns twice: keep it out of the callers
{
    f.stack.reset(new char[kStackBytes]);
    getcontext(&f.context);
}

// ---- scheduling --------------------------------------------------------------------------------

struct Order
{
    enum
    {
        Forward,
        Reverse,
        Random
    } kind = Forward;
    std::mt19937 random;
};

Order readOrder()
{
    Order order;
    const char* text = std::getenv("RMEETO_EMULATION_ORDER");
    const std::string value = text ? text : "forward";
    if (value == "reverse")
    {
        order.kind = Order::Reverse;
    }
    else if (value.rfind("random:", 0) == 0)
    {
        order.kind = Order::Random;
        order.random.seed(static_cast<unsigned>(std::strtoul(value.c_str() + 7, nullptr, 10)));
    }
    else if (value != "forward")
    {
        std::fprintf(stderr, "rmeeto CUDA emulation: RMEETO_EMULATION_ORDER=%s is not forward, reverse or random:SEED\n",
            value.c_str());
        std::abort();
    }
    return order;
}

uint64_t shuffleSource(Fiber const& f, unsigned lane)
{
    const unsigned width = static_cast<unsigned>(f.width);
    const unsigned base = lane & ~(width - 1);
    const unsigned arg = static_cast<unsigned>(f.argument);
    switch (f.kind)
    {
    case ShuffleKind::Index: return base + arg % width;
    case ShuffleKind::Up: return lane - base >= arg ? lane - arg : lane;
    case ShuffleKind::Down: return lane - base + arg < width ? lane + arg : lane;
    case ShuffleKind::Xor: return (lane ^ arg) < base + width ? lane ^ arg : lane;
    }
    return lane;
}

// Exchanges the values of every warp whose named lanes all wait at a shuffle. Returns whether any
// lane was released; records an error when a mask names a lane that exited or waits elsewhere.
bool exchangeShuffles()
{
    bool released = false;
    std::deque<Fiber>& fibers = g_block.fibers;
    for (unsigned first = 0; first < g_block.threads && g_block.error.empty(); first += kWarp)
    {
        const unsigned lanes = std::min(kWarp, g_block.threads - first);
        for (unsigned lane = 0; lane < lanes; ++lane)
        {
            Fiber& caller = fibers[first + lane];
            if (caller.state != State::AtShuffle)
            {
                continue;
            }
            if (!(caller.mask >> lane & 1u))
            {
                fail(&caller, "shuffle mask 0x%08x does not name the calling lane %u", caller.mask, lane);
                return false;
            }
            if (caller.width <= 0 || caller.width > static_cast<int>(kWarp) || (caller.width & (caller.width - 1)))
            {
                fail(&caller, "shuffle width %d is not a power of two up to 32", caller.width);
                return false;
            }
            for (unsigned other = 0; other < kWarp; ++other)
            {
                if (!(caller.mask >> other & 1u))
                {
                    continue;
                }
                if (other >= lanes)
                {
                    fail(&caller, "shuffle mask 0x%08x names lane %u, which this block does not have", caller.mask,
                        other);
                    return false;
                }
                Fiber const& peer = fibers[first + other];
                if (peer.state == State::Exited)
                {
                    fail(&caller, "shuffle mask 0x%08x names lane %u, which has exited", caller.mask, other);
                    return false;
                }
                if (peer.state != State::AtShuffle || peer.mask != caller.mask || peer.kind != caller.kind
                    || peer.width != caller.width)
                {
                    fail(&caller, "shuffle mask 0x%08x names lane %u, which has diverged (%s)", caller.mask, other,
                        peer.state == State::AtBarrier ? "it waits at __syncthreads" : "it waits at another shuffle");
                    return false;
                }
            }
            uint64_t results[kWarp];
            for (unsigned other = 0; other < kWarp; ++other)
            {
                if (!(caller.mask >> other & 1u))
                {
                    continue;
                }
                Fiber const& reader = fibers[first + other];
                const uint64_t source = shuffleSource(reader, other);
                if (!(caller.mask >> source & 1u))
                {
                    fail(&reader, "shuffle reads lane %u, which mask 0x%08x leaves out", static_cast<unsigned>(source),
                        caller.mask);
                    return false;
                }
                results[other] = fibers[first + source].value;
            }
            for (unsigned other = 0; other < kWarp; ++other)
            {
                if (caller.mask >> other & 1u)
                {
                    fibers[first + other].value = results[other];
                    fibers[first + other].state = State::Ready;
                }
            }
            released = true;
        }
    }
    return released;
}

// Opens the barrier when every thread of the block waits at it; records an error when only some do.
bool openBarrier()
{
    Fiber* waiting = nullptr;
    Fiber* missing = nullptr;
    for (Fiber& f : g_block.fibers)
    {
        (f.state == State::AtBarrier ? waiting : missing) = &f;
    }
    if (waiting == nullptr)
    {
        return false;
    }
    if (missing != nullptr)
    {
        fail(waiting, "__syncthreads reached by only some threads of the block: thread (%u,%u,%u) %s",
            missing->view.thread.x, missing->view.thread.y, missing->view.thread.z,
            missing->state == State::Exited ? "has exited" : "waits at a shuffle");
        return false;
    }
    for (Fiber& f : g_block.fibers)
    {
        f.state = State::Ready;
    }
    return true;
}

void runBlock(Order& order, std::vector<unsigned>& sequence)
{
    for (Fiber& f : g_block.fibers)
    {
        f.state = State::Ready;
    }
    for (bool first = true; g_block.error.empty() && (first || exchangeShuffles() || openBarrier()); first = false)
    {
        sequence.clear();
        for (Fiber& f : g_block.fibers)
        {
            if (f.state == State::Ready)
            {
                sequence.push_back(f.linear);
            }
        }
        if (order.kind == Order::Reverse)
        {
            std::reverse(sequence.begin(), sequence.end());
        }
        else if (order.kind == Order::Random)
        {
            std::shuffle(sequence.begin(), sequence.end(), order.random);
        }
        for (size_t i = 0; i < sequence.size() && g_block.error.empty(); ++i)
        {
            run(g_block.fibers[sequence[i]]);
        }
    }
}

bool withinLimits(dim3 grid, dim3 block, size_t dynamicSmem)
{
    const unsigned blockDims[3] = {block.x, block.y, block.z};
    const unsigned gridDims[3] = {grid.x, grid.y, grid.z};
    for (int i = 0; i < 3; ++i)
    {
        if (blockDims[i] == 0 || blockDims[i] > kMaxBlockDim[i])
        {
            fail(nullptr, "block dimension %c = %u is outside 1..%u", "xyz"[i], blockDims[i], kMaxBlockDim[i]);
        }
        if (gridDims[i] == 0 || gridDims[i] > kMaxGridDim[i])
        {
            fail(nullptr, "grid dimension %c = %u is outside 1..%u", "xyz"[i], gridDims[i], kMaxGridDim[i]);
        }
    }
    if (static_cast<uint64_t>(block.x) * block.y * block.z > kMaxThreadsPerBlock)
    {
        fail(nullptr, "a block of %u x %u x %u threads is over the limit of %u", block.x, block.y, block.z,
            kMaxThreadsPerBlock);
    }
    if (dynamicSmem > kMaxSharedBytes)
    {
        fail(nullptr, "%zu bytes of dynamic shared memory are over the %zu-byte limit", dynamicSmem, kMaxSharedBytes);
    }
    return g_block.error.empty();
}

} // namespace

void syncthreads()
{
    Fiber& f = *g_block.running;
    f.state = State::AtBarrier;
    toScheduler(f);
}

uint64_t shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int argument, int width)
{
    Fiber& f = *g_block.running;
    f.kind = kind;
    f.mask = mask;
    f.value = bits;
    f.argument = argument;
    f.width = width;
    f.state = State::AtShuffle;
    toScheduler(f);
    return f.value;
}

void* staticShared(const char* key, size_t bytes)
{
    for (SharedArray const& array : g_block.staticShared)
    {
        if (std::strcmp(array.key, key) == 0)
        {
            return array.bytes.get();
        }
    }
    g_block.staticBytes += bytes;
    if (g_block.staticBytes + g_block.dynamicBytes > kMaxSharedBytes)
    {
        fail(g_block.running, "__shared__ %s takes the block's shared memory to %zu static + %zu dynamic bytes, over %zu",
            key, g_block.staticBytes, g_block.dynamicBytes, kMaxSharedBytes);
        toScheduler(*g_block.running); // never resumed: the launch ends with the error
    }
    // One allocation per array, exactly its size: AddressSanitizer sees any access past its end.
    SharedArray array{key, std::unique_ptr<unsigned char[]>(new unsigned char[bytes])};
    std::memset(array.bytes.get(), kPoison, bytes);
    g_block.staticShared.push_back(std::move(array));
    return g_block.staticShared.back().bytes.get();
}

void* dynamicShared()
{
    return g_block.dynamicShared.get();
}

void launch(const char* kernel, dim3 grid, dim3 block, size_t dynamicSmem, cudaStream_t, void (*body)(void*),
    void* context)
{
    std::lock_guard<std::mutex> lock(g_launchMutex);
    g_block.kernel = kernel;
    g_block.body = body;
    g_block.context = context;
    g_block.error.clear();
    if (withinLimits(grid, block, dynamicSmem))
    {
        g_block.threads = block.x * block.y * block.z;
        g_block.fibers.resize(g_block.threads);
        g_block.dynamicBytes = dynamicSmem;
        Order order = readOrder();
        std::vector<unsigned> sequence;
        for (unsigned i = 0; i < g_block.threads; ++i)
        {
            Fiber& f = g_block.fibers[i];
            if (!f.stack)
            {
                allocate(f);
            }
            f.linear = i;
            f.view.thread = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
            f.view.blockSize = block;
            f.view.gridSize = grid;
        }
        for (unsigned z = 0; z < grid.z && g_block.error.empty(); ++z)
        {
            for (unsigned y = 0; y < grid.y && g_block.error.empty(); ++y)
            {
                for (unsigned x = 0; x < grid.x && g_block.error.empty(); ++x)
                {
                    for (Fiber& f : g_block.fibers)
                    {
                        f.view.block = uint3{x, y, z};
                    }
                    g_block.staticShared.clear();
                    g_block.staticBytes = 0;
                    g_block.dynamicShared.reset(new unsigned char[dynamicSmem]);
                    std::memset(g_block.dynamicShared.get(), kPoison, dynamicSmem);
                    runBlock(order, sequence);
                }
            }
        }
    }
    if (!g_block.error.empty())
    {
        for (Fiber& f : g_block.fibers)
        {
            f.alive = f.alive && f.state == State::Exited; // the others stopped mid-kernel: start them afresh
        }
        std::fprintf(stderr, "%s\n", g_block.error.c_str());
        t_lastError = cudaErrorLaunchFailure;
        t_lastMessage = g_block.error;
    }
}

} // namespace rmeeto_emu

extern "C" cudaError_t cudaPeekAtLastError(void)
{
    return rmeeto_emu::t_lastError;
}

extern "C" cudaError_t cudaGetLastError(void)
{
    const cudaError_t error = rmeeto_emu::t_lastError;
    rmeeto_emu::t_lastError = cudaSuccess;
    return error;
}

extern "C" const char* cudaGetErrorName(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

extern "C" const char* cudaGetErrorString(cudaError_t error)
{
    if (error == cudaErrorLaunchFailure && !rmeeto_emu::t_lastMessage.empty())
    {
        return rmeeto_emu::t_lastMessage.c_str();
    }
    return error == cudaSuccess ? "no error" : "unspecified launch failure";
}
