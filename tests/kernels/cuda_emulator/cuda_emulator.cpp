// The CUDA emulator's runtime (cuda_emulator.h): fibers for threads, device
// memory in guarded mappings, and cuBLAS's GEMMs.
#include "kernels/cuda_emulator/cuda_emulator.h"

#include <signal.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define BOREALIS_EMULATOR_ASAN 1
#else
#define BOREALIS_EMULATOR_ASAN 0
#endif

namespace borealis::cuda_emulator {
namespace {

std::size_t page_size() {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

// ---- device memory ----------------------------------------------------------

struct Allocation {
  char* map;
  std::size_t map_bytes;
  std::size_t bytes;
};

constexpr std::size_t kEmulatedMemory = std::size_t{80} << 30;

std::mutex g_memory_mutex;
std::size_t g_memory_limit = kEmulatedMemory;  // set_memory_limit
std::size_t g_allocated = 0;                   // bytes asked for by live allocations
std::map<std::uintptr_t, Allocation>& allocations() {
  static std::map<std::uintptr_t, Allocation> map;
  return map;
}

// The allocation holding ptr (end included, for empty ranges), or null.
const Allocation* find_allocation(const void* ptr, std::uintptr_t* begin) {
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  auto& map = allocations();
  auto it = map.upper_bound(p);
  if (it == map.begin()) return nullptr;
  --it;
  if (p > it->first + it->second.bytes) return nullptr;
  *begin = it->first;
  return &it->second;
}

// ---- fibers -----------------------------------------------------------------

// A suspended fiber, and the switch between two. On x86-64 the switch saves
// the callee-saved registers on the running stack and moves the stack
// pointer (no system call, unlike swapcontext, which sets the signal mask:
// kernels switch at every shuffle and barrier); elsewhere it is ucontext's.
#if defined(__x86_64__)
extern "C" void borealis_emulator_switch(void** from_sp, void* to_sp);
asm(R"(
  .text
  .globl borealis_emulator_switch
  .hidden borealis_emulator_switch
  .type borealis_emulator_switch, @function
borealis_emulator_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size borealis_emulator_switch, .-borealis_emulator_switch
)");

struct Context {
  void* sp = nullptr;
};
void switch_context(Context& from, const Context& to) {
  borealis_emulator_switch(&from.sp, to.sp);
}
// A context that starts entry() on [stack, stack + bytes): the stack holds
// the six registers the switch pops, entry's address for its ret, and a
// null return address for entry, which never returns (16-byte alignment as
// at a call).
void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top) - 8;
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  sp[6] = reinterpret_cast<void*>(entry);
  sp[7] = nullptr;
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, const Context& to) {
  swapcontext(&from.uc, &to.uc);
}
// (A function of its own: the caller's locals are not live across
// getcontext, which returns twice.)
[[gnu::noinline]] void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

enum class State { kReady, kBarrier, kShuffle, kDone };

struct Thread {
  Context context;
  uint3 index;
  int linear = 0;
  State state = State::kReady;
  int shuffle_src = 0;
  std::size_t shuffle_bytes = 0;
  std::uint64_t shuffle_in = 0;
  std::uint64_t shuffle_out = 0;
};

// Fiber stacks, kept between launches: each is a mapping whose lowest page
// is inaccessible (a stack overflow faults instead of corrupting memory).
constexpr std::size_t kStackBytes = std::size_t{256} << 10;
struct Stacks {
  std::vector<char*> stacks;
  // Whether a launch failed with fibers still suspended on these stacks:
  // under ASan their frames' redzones stay poisoned for the next fibers.
  bool abandoned = false;
  void clean() {
#if BOREALIS_EMULATOR_ASAN
    for (char* s : stacks) ASAN_UNPOISON_MEMORY_REGION(s + page_size(), kStackBytes - page_size());
#endif
    abandoned = false;
  }
  ~Stacks() {
    for (char* s : stacks) munmap(s, kStackBytes);
  }
  char* get(std::size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      mprotect(p, page_size(), PROT_NONE);
      stacks.push_back(static_cast<char*>(p));
    }
    return stacks[i];
  }
};

struct BlockRun {
  const char* what = nullptr;
  const std::function<void()>* body = nullptr;
  dim3 grid, block;
  uint3 block_index{0, 0, 0};
  std::vector<Thread> threads;
  int current = -1;
  Context scheduler;
  std::exception_ptr error;
  std::vector<const void*> fresh;  // shared arrays filled with NaNs for this block
#if BOREALIS_EMULATOR_ASAN
  const void* scheduler_stack = nullptr;
  std::size_t scheduler_stack_bytes = 0;
#endif
};

thread_local BlockRun* t_run = nullptr;
thread_local Stacks t_stacks;

BlockRun& run() {
  if (t_run == nullptr) {
    throw std::logic_error("emulated CUDA: a device built-in was used outside a kernel");
  }
  return *t_run;
}

Thread& self() {
  return run().threads[static_cast<std::size_t>(run().current)];
}

// Switches from the running fiber back to the scheduler.
void yield() {
  BlockRun& r = run();
  Thread& t = self();
#if BOREALIS_EMULATOR_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, r.scheduler_stack, r.scheduler_stack_bytes);
  switch_context(t.context, r.scheduler);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(t.context, r.scheduler);
#endif
}

void fiber_main() {
  BlockRun& r = *t_run;
#if BOREALIS_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.scheduler_stack, &r.scheduler_stack_bytes);
#endif
  try {
    (*r.body)();
  } catch (...) {
    if (!r.error) r.error = std::current_exception();
  }
  r.threads[static_cast<std::size_t>(r.current)].state = State::kDone;
#if BOREALIS_EMULATOR_ASAN
  __sanitizer_start_switch_fiber(nullptr, r.scheduler_stack, r.scheduler_stack_bytes);
#endif
  Context finished;
  switch_context(finished, r.scheduler);  // never resumed
}

void resume(BlockRun& r, int i) {
  r.current = i;
  Thread& t = r.threads[static_cast<std::size_t>(i)];
#if BOREALIS_EMULATOR_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t_stacks.get(static_cast<std::size_t>(i)) + page_size(),
                                 kStackBytes - page_size());
  switch_context(r.scheduler, t.context);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(r.scheduler, t.context);
#endif
  r.current = -1;
}

// A fiber that will run fiber_main on `stack` (above its guard page).
void start_fiber(Thread& t, char* stack) {
  make_context(t.context, stack + page_size(), kStackBytes - page_size(), fiber_main);
}

std::string describe(const uint3& v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

[[noreturn]] void fail(const BlockRun& r, const std::string& why) {
  throw std::runtime_error(std::string("emulated CUDA: kernel ") + r.what + ", block " +
                           describe(r.block_index) + ": " + why);
}

// Releases warp w's shuffle if all its lanes wait at it. Returns whether it
// did.
bool release_warp(BlockRun& r, int w) {
  const int n = static_cast<int>(r.threads.size());
  const int lo = w * 32, hi = std::min(n, lo + 32);
  int waiting = 0;
  for (int i = lo; i < hi; ++i)
    waiting += r.threads[static_cast<std::size_t>(i)].state == State::kShuffle;
  if (waiting == 0 || waiting != hi - lo) return false;
  for (int i = lo; i < hi; ++i) {
    Thread& t = r.threads[static_cast<std::size_t>(i)];
    const int src = lo + t.shuffle_src;
    if (src >= hi)
      fail(r, "a shuffle reads lane " + std::to_string(t.shuffle_src) + " of a partial warp");
    const Thread& from = r.threads[static_cast<std::size_t>(src)];
    if (from.shuffle_bytes != t.shuffle_bytes)
      fail(r, "lanes of warp " + std::to_string(w) + " shuffle values of different sizes");
    t.shuffle_out = from.shuffle_in;
  }
  for (int i = lo; i < hi; ++i) r.threads[static_cast<std::size_t>(i)].state = State::kReady;
  return true;
}

// Releases the warps whose lanes all wait at a shuffle, or else the block
// barrier if every thread still running waits at it. Returns whether
// anything was released.
bool release(BlockRun& r) {
  bool released = false;
  const int n = static_cast<int>(r.threads.size());
  for (int w = 0; w * 32 < n; ++w) released = release_warp(r, w) || released;
  if (released) return true;
  int running = 0, at_barrier = 0;
  for (const Thread& t : r.threads) {
    running += t.state != State::kDone;
    at_barrier += t.state == State::kBarrier;
  }
  if (running > 0 && at_barrier == running) {
    for (Thread& t : r.threads) {
      if (t.state == State::kBarrier) t.state = State::kReady;
    }
    return true;
  }
  return false;
}

[[noreturn]] void deadlock(const BlockRun& r) {
  int done = 0, barrier = 0, shuffle = 0;
  std::string first_shuffle, first_done;
  for (const Thread& t : r.threads) {
    if (t.state == State::kDone) {
      ++done;
      if (first_done.empty()) first_done = std::to_string(t.linear);
    } else if (t.state == State::kBarrier) {
      ++barrier;
    } else if (t.state == State::kShuffle) {
      ++shuffle;
      if (first_shuffle.empty()) first_shuffle = std::to_string(t.linear);
    }
  }
  fail(r, "threads can never go on: " + std::to_string(barrier) + " wait at __syncthreads, " +
              std::to_string(shuffle) + " at a warp shuffle" +
              (first_shuffle.empty() ? "" : " (thread " + first_shuffle + " among them)") + ", " +
              std::to_string(done) + " have returned" +
              (first_done.empty() ? "" : " (thread " + first_done + " among them)") +
              ": a barrier or shuffle not reached by every thread it waits for");
}

// ---- faults inside kernels --------------------------------------------------

const char* volatile g_fault_kernel = nullptr;

void write_text(const char* s) {
  const ssize_t ignored = write(STDERR_FILENO, s, std::strlen(s));
  (void)ignored;
}

void write_number(std::uint64_t v) {
  char buf[24];
  int i = 23;
  buf[i] = '\0';
  do {
    buf[--i] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && i > 0);
  write_text(buf + i);
}

void on_fault(int sig, siginfo_t* info, void*) {
  write_text("emulated CUDA: kernel ");
  write_text(g_fault_kernel != nullptr ? g_fault_kernel : "?");
  const BlockRun* r = t_run;
  if (r != nullptr && r->current >= 0) {
    const Thread& t = r->threads[static_cast<std::size_t>(r->current)];
    write_text(", block (");
    write_number(r->block_index.x);
    write_text(", ");
    write_number(r->block_index.y);
    write_text("), thread ");
    write_number(static_cast<std::uint64_t>(t.linear));
  }
  write_text(": invalid memory access at address ");
  write_number(reinterpret_cast<std::uintptr_t>(info->si_addr));
  write_text(" (past the end of a device allocation, or not device memory)\n");
  signal(sig, SIG_DFL);
  raise(sig);
}

// SIGSEGV and SIGBUS report the kernel while it runs (on a stack of their
// own: a fiber's may be the one that overflowed).
class FaultReport {
 public:
  explicit FaultReport(const char* what) {
    g_fault_kernel = what;
    static thread_local std::vector<char> alt(std::size_t{64} << 10);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, &old_stack_);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv_);
    sigaction(SIGBUS, &sa, &old_bus_);
  }
  ~FaultReport() {
    sigaction(SIGSEGV, &old_segv_, nullptr);
    sigaction(SIGBUS, &old_bus_, nullptr);
    sigaltstack(&old_stack_, nullptr);
    g_fault_kernel = nullptr;
  }
  FaultReport(const FaultReport&) = delete;
  FaultReport& operator=(const FaultReport&) = delete;

 private:
  struct sigaction old_segv_ {
  }, old_bus_{};
  stack_t old_stack_{};
};

cudaError_t g_last_error = cudaSuccess;

}  // namespace

const uint3& thread_index() {
  return self().index;
}
const uint3& block_index() {
  return run().block_index;
}
const dim3& block_dim() {
  return run().block;
}
const dim3& grid_dim() {
  return run().grid;
}
int lane() {
  return self().linear % 32;
}
int warp() {
  return self().linear / 32;
}

void syncthreads() {
  self().state = State::kBarrier;
  yield();
}

void kernel_error(const std::string& why) {
  fail(run(), why);
}

void fresh_shared_array(void* array, std::size_t bytes) {
  BlockRun& r = run();
  if (std::find(r.fresh.begin(), r.fresh.end(), array) != r.fresh.end()) return;
  r.fresh.push_back(array);
  std::memset(array, 0xff, bytes);
}

std::uint64_t exchange(unsigned mask, std::uint64_t value, std::size_t bytes, int src) {
  if (mask != 0xffffffffu) {
    fail(run(), "warp shuffles with a partial mask are not emulated");
  }
  Thread& t = self();
  t.shuffle_in = value;
  t.shuffle_bytes = bytes;
  t.shuffle_src = src;
  t.state = State::kShuffle;
  yield();
  return self().shuffle_out;
}

bool is_device(const void* ptr, std::size_t bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  std::uintptr_t begin = 0;
  const Allocation* a = find_allocation(ptr, &begin);
  return a != nullptr && reinterpret_cast<std::uintptr_t>(ptr) + bytes <= begin + a->bytes;
}

std::size_t live_allocations() {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  return allocations().size();
}

void set_memory_limit(std::size_t bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  g_memory_limit = bytes == 0 ? kEmulatedMemory : bytes;
}

namespace {
std::mutex g_launches_mutex;
std::map<std::string, std::uint64_t, std::less<>> g_launches;
}  // namespace

std::uint64_t launches(std::string_view what) {
  std::lock_guard<std::mutex> lock(g_launches_mutex);
  const auto it = g_launches.find(what);
  return it == g_launches.end() ? 0 : it->second;
}

void run_grid(const char* what, dim3 grid, dim3 block, const std::function<void()>& body) {
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;
    throw std::runtime_error(
        std::string("emulated CUDA: kernel ") + what + ": invalid launch configuration: grid " +
        describe({grid.x, grid.y, grid.z}) + ", block " + describe({block.x, block.y, block.z}));
  }
  if (t_run != nullptr) throw std::logic_error("emulated CUDA: a launch from inside a kernel");
  {
    std::lock_guard<std::mutex> lock(g_launches_mutex);
    ++g_launches[what];
  }
  BlockRun r;
  r.what = what;
  r.body = &body;
  r.grid = grid;
  r.block = block;
  r.threads.resize(threads);
  // Threads run in this order between barriers: a fixed shuffle, not index order.
  std::vector<int> order(threads);
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::mt19937 rng(12345u + static_cast<unsigned>(threads));
  std::shuffle(order.begin(), order.end(), rng);
  // Each warp's lanes in that order, and the warps in a shuffled order.
  const std::size_t warps = (threads + 31) / 32;
  std::vector<std::vector<int>> warp_lanes(warps);
  for (const int i : order) warp_lanes[static_cast<std::size_t>(i) / 32].push_back(i);
  std::vector<int> warp_order(warps);
  for (std::size_t w = 0; w < warps; ++w) warp_order[w] = static_cast<int>(w);
  std::shuffle(warp_order.begin(), warp_order.end(), rng);
  FaultReport report(what);
  if (t_stacks.abandoned) t_stacks.clean();
  t_run = &r;
  struct Reset {
    ~Reset() {
      t_run = nullptr;
      // Unwinding (an error): fibers are left suspended mid-kernel.
      if (std::uncaught_exceptions() > 0) t_stacks.abandoned = true;
    }
  } reset;
  // Blocks run one at a time, but not in index order (a GPU runs them in
  // any order, many at once): the k-th is block (count / 2 + stride * k)
  // mod count, with stride coprime to count, so a block that reads what
  // another block of the same launch writes sees it early or late.
  const std::uint64_t count = std::uint64_t{grid.x} * grid.y * grid.z;
  std::uint64_t stride = 0x9E3779B97F4A7C15ull % count;
  while (std::gcd(stride, count) != 1) ++stride;
  std::uint64_t linear = count / 2;
  for (std::uint64_t k = 0; k < count; ++k, linear = (linear + stride) % count) {
    r.block_index = {static_cast<unsigned>(linear % grid.x),
                     static_cast<unsigned>(linear / grid.x % grid.y),
                     static_cast<unsigned>(linear / (std::uint64_t{grid.x} * grid.y))};
    r.fresh.clear();
    for (std::size_t i = 0; i < threads; ++i) {
      Thread& t = r.threads[i];
      const auto li = static_cast<unsigned>(i);
      t.index = {li % block.x, li / block.x % block.y, li / (block.x * block.y)};
      t.linear = static_cast<int>(i);
      t.state = State::kReady;
      start_fiber(t, t_stacks.get(i));
    }
    // Every third block (the first included) runs its threads interleaved;
    // the others run one warp at a time, each as far as it can go (through
    // its shuffles and wmma calls, to the next __syncthreads) before the
    // next starts, the warps in a shuffled order and in the reverse of it
    // in turn. Where only warp-level synchronization sits between one
    // warp's writes to shared memory and another's reads, the reader then
    // runs before the writer in some block.
    const int policy = static_cast<int>(k % 3);
    const auto run_ready = [&](const std::vector<int>& threads_in_order) {
      bool ran = false;
      for (const int i : threads_in_order) {
        if (r.threads[static_cast<std::size_t>(i)].state != State::kReady) continue;
        resume(r, i);
        ran = true;
        if (r.error) std::rethrow_exception(r.error);
      }
      return ran;
    };
    for (;;) {
      bool ran = false;
      if (policy == 0) {
        ran = run_ready(order);
      } else {
        for (std::size_t o = 0; o < warp_order.size(); ++o) {
          const int w = warp_order[policy == 1 ? o : warp_order.size() - 1 - o];
          // Each pass runs the warp's ready lanes until they block; only a
          // released collective makes one of them ready again.
          do {
            ran = run_ready(warp_lanes[static_cast<std::size_t>(w)]) || ran;
          } while (release_warp(r, w));
        }
      }
      bool all_done = true;
      for (const Thread& t : r.threads) all_done = all_done && t.state == State::kDone;
      if (all_done) break;
      if (!release(r) && !ran) deadlock(r);
    }
  }
}

}  // namespace borealis::cuda_emulator

// ---- the runtime API ----------------------------------------------------------

using borealis::cuda_emulator::Allocation;
using borealis::cuda_emulator::allocations;
using borealis::cuda_emulator::find_allocation;
using borealis::cuda_emulator::g_allocated;
using borealis::cuda_emulator::g_last_error;
using borealis::cuda_emulator::g_memory_limit;
using borealis::cuda_emulator::g_memory_mutex;
using borealis::cuda_emulator::page_size;

namespace {

// Whether [ptr, ptr + bytes) is device memory (is_device) or wholly host
// memory (no byte of it on the device).
bool on_device(const void* ptr, std::size_t bytes) {
  return borealis::cuda_emulator::is_device(ptr, bytes);
}
bool off_device(const void* ptr, std::size_t bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  const auto& map = allocations();
  auto it = map.lower_bound(p);
  if (it != map.end() && it->first < p + std::max<std::size_t>(bytes, 1)) return false;
  if (it == map.begin()) return true;
  --it;
  return p >= it->first + it->second.bytes;
}

cudaError_t fail_with(cudaError_t err) {
  g_last_error = err;
  return err;
}

}  // namespace

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNotReady:
      return "device not ready";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t err = g_last_error;
  g_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : fail_with(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  *total = g_memory_limit;
  *free = g_memory_limit - std::min(g_memory_limit, g_allocated);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, std::size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(g_memory_mutex);
    if (bytes > g_memory_limit - std::min(g_memory_limit, g_allocated)) {
      return fail_with(cudaErrorMemoryAllocation);
    }
  }
  const std::size_t page = page_size();
  const std::size_t user = (std::max<std::size_t>(bytes, 1) + 15) / 16 * 16;
  const std::size_t data = (user + page - 1) / page * page;
  void* map =
      mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return fail_with(cudaErrorMemoryAllocation);
  char* base = static_cast<char*>(map);
  mprotect(base + data, page, PROT_NONE);
  char* p = base + data - user;
  std::memset(p, 0xff, user);  // NaN in every float: reads before writes show
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  allocations()[reinterpret_cast<std::uintptr_t>(p)] = Allocation{base, data + page, bytes};
  g_allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  auto& map = allocations();
  const auto it = map.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == map.end()) return fail_with(cudaErrorInvalidValue);
  munmap(it->second.map, it->second.map_bytes);
  g_allocated -= it->second.bytes;
  map.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, std::size_t bytes) {
  if (!on_device(ptr, bytes)) return fail_with(cudaErrorInvalidValue);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToHost:
      ok = off_device(dst, bytes) && off_device(src, bytes);
      break;
    case cudaMemcpyHostToDevice:
      ok = on_device(dst, bytes) && off_device(src, bytes);
      break;
    case cudaMemcpyDeviceToHost:
      ok = off_device(dst, bytes) && on_device(src, bytes);
      break;
    case cudaMemcpyDeviceToDevice:
      ok = on_device(dst, bytes) && on_device(src, bytes);
      break;
  }
  if (!ok) return fail_with(cudaErrorInvalidValue);
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}

// Work queued on a stream (the emulated collectives), pending until its
// poll returns true.
struct PendingWork {
  std::function<bool()> poll;
  bool done = false;
  bool finished() {
    if (!done) done = poll();
    return done;
  }
};
using WorkList = std::vector<std::shared_ptr<PendingWork>>;

static bool all_finished(WorkList& work) {
  bool all = true;
  for (auto& w : work) all = w->finished() && all;
  return all;
}

static void finish_all(WorkList& work) {
  while (!all_finished(work)) std::this_thread::yield();
}

struct CUstream_st {
  WorkList work;
};

struct CUevent_st {
  std::chrono::steady_clock::time_point at;
  bool recorded = false;
  WorkList after;  // the stream's work pending when it was recorded
};

void borealis::cuda_emulator::enqueue(cudaStream_t stream, std::function<bool()> poll) {
  if (stream == nullptr) throw std::logic_error("emulated CUDA: enqueue on the default stream");
  auto& work = stream->work;
  std::erase_if(work, [](const auto& w) { return w->done; });
  work.push_back(std::make_shared<PendingWork>(PendingWork{std::move(poll)}));
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  *stream = new CUstream_st();
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return fail_with(cudaErrorInvalidValue);
  finish_all(stream->work);  // as CUDA: the stream's work completes first
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
  finish_all(event->after);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (stream != nullptr) finish_all(stream->work);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  return cudaEventCreate(event);
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  event->at = std::chrono::steady_clock::now();
  event->recorded = true;
  event->after.clear();
  if (stream != nullptr) {
    for (const auto& w : stream->work) {
      if (!w->done) event->after.push_back(w);
    }
  }
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  return all_finished(event->after) ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!event->recorded) return fail_with(cudaErrorInvalidValue);
  finish_all(event->after);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  if (!start->recorded || !stop->recorded) return fail_with(cudaErrorInvalidValue);
  *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
  return cudaSuccess;
}

// ---- cuBLAS -------------------------------------------------------------------

struct cublasContext {
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasAtomicsMode_t atomics = CUBLAS_ATOMICS_NOT_ALLOWED;
};

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "unknown cuBLAS status";
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->atomics = mode;
  return CUBLAS_STATUS_SUCCESS;
}

namespace {

float load(const void* base, cudaDataType type, std::int64_t i) {
  if (type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

// A column-major operand of `rows` x `cols` (as stored) with leading
// dimension ld must lie inside one device allocation.
void check_operand(const char* what, const char* name, const void* p, cudaDataType type, int rows,
                   int cols, int ld) {
  if (rows == 0 || cols == 0) return;
  const std::size_t elem = type == CUDA_R_16BF ? 2 : 4;
  const std::size_t extent = (static_cast<std::size_t>(ld) * static_cast<std::size_t>(cols - 1) +
                              static_cast<std::size_t>(rows)) *
                             elem;
  if (!borealis::cuda_emulator::is_device(p, extent)) {
    throw std::runtime_error(std::string("emulated cuBLAS: ") + what + ": operand " + name + " (" +
                             std::to_string(rows) + " x " + std::to_string(cols) + ", ld " +
                             std::to_string(ld) + ") does not lie inside one device allocation");
  }
}

// cuBLASLt's epilogues: GELU in its tanh form, as cuBLASLt computes it.
struct Epilogue {
  cublasLtEpilogue_t kind = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // m values (BIAS), of bias_type
  // As cuBLASLt's: CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, or (-1) D's type.
  std::int32_t bias_data_type = -1;
  cudaDataType bias_type = CUDA_R_32F;  // the one in force, set by cublasLtMatmul
  void* aux = nullptr;                  // m x n, ld ldaux: GELU's input (GELU_AUX, DGELU)
  std::int64_t ldaux = 0;
  cudaDataType aux_type = CUDA_R_32F;  // D's, set by cublasLtMatmul
};

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCube = 0.044715f;

float apply(const Epilogue& e, float x, int i, int j) {
  if (e.kind == CUBLASLT_EPILOGUE_DEFAULT) return x;
  if (e.kind == CUBLASLT_EPILOGUE_BIAS || e.kind == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
    x += e.bias_type == CUDA_R_16BF ? __bfloat162float(static_cast<const __nv_bfloat16*>(e.bias)[i])
                                    : static_cast<const float*>(e.bias)[i];
  }
  const std::int64_t at = i + j * e.ldaux;
  const auto tanh_of = [](float v) { return std::tanh(kGeluScale * (v + kGeluCube * v * v * v)); };
  if (e.kind == CUBLASLT_EPILOGUE_GELU_AUX || e.kind == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
    if (e.aux_type == CUDA_R_16BF) {
      static_cast<__nv_bfloat16*>(e.aux)[at] = __float2bfloat16(x);
    } else {
      static_cast<float*>(e.aux)[at] = x;
    }
    return 0.5f * x * (1.0f + tanh_of(x));
  }
  if (e.kind == CUBLASLT_EPILOGUE_DGELU) {
    const float v = load(e.aux, e.aux_type, at), th = tanh_of(v);
    const float du = kGeluScale * (1.0f + 3.0f * kGeluCube * v * v);
    return (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du) * x;
  }
  return x;
}

// C = alpha op(A) op(B) + beta C, then the epilogue, column-major (C is m x
// n, op(A) m x k, op(B) k x n), accumulated in fp32 in k order; C is not
// read when beta is 0.
cublasStatus_t gemm(const char* what, bool handle, cublasOperation_t ta, cublasOperation_t tb,
                    int m, int n, int k, float alpha, const void* A, cudaDataType at, int lda,
                    const void* B, cudaDataType bt, int ldb, float beta, float* C, int ldc,
                    const Epilogue& epilogue = {}) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
  const int b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) ||
      ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  check_operand(what, "A", A, at, a_rows, a_cols, lda);
  check_operand(what, "B", B, bt, b_rows, b_cols, ldb);
  check_operand(what, "C", C, CUDA_R_32F, m, n, ldc);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int p = 0; p < k; ++p) {
        const std::int64_t ai =
            ta == CUBLAS_OP_N ? i + std::int64_t{p} * lda : p + std::int64_t{i} * lda;
        const std::int64_t bi =
            tb == CUBLAS_OP_N ? p + std::int64_t{j} * ldb : j + std::int64_t{p} * ldb;
        s += load(A, at, ai) * load(B, bt, bi);
      }
      float& c = C[i + std::int64_t{j} * ldc];
      c = apply(epilogue, beta == 0.0f ? alpha * s : alpha * s + beta * c, i, j);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc) {
  return gemm("cublasSgemm", handle != nullptr, transa, transb, m, n, k, *alpha, A, CUDA_R_32F, lda,
              B, CUDA_R_32F, ldb, *beta, C, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (Ctype != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm("cublasGemmEx", handle != nullptr, transa, transb, m, n, k,
              *static_cast<const float*>(alpha), A, Atype, lda, B, Btype, ldb,
              *static_cast<const float*>(beta), static_cast<float*>(C), ldc);
}

// ---- cuBLASLt -----------------------------------------------------------------

struct cublasLtContext {};
struct cublasLtMatmulDescOpaque_t {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  Epilogue epilogue;
};
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType type = CUDA_R_32F;
  std::uint64_t rows = 0, cols = 0;
  std::int64_t ld = 0;
};
struct cublasLtMatmulPreferenceOpaque_t {
  std::size_t workspace = 0;
  std::uint32_t align[4] = {256, 256, 256, 256};  // of A, B, C and D, in bytes
};

namespace {

std::atomic<std::uint64_t> g_lt_matmuls{0};

// Whether D = op(A) op(B) with `desc`'s epilogue is a problem cuBLASLt
// takes: consistent shapes, fp32 C and D, the epilogue's pointers set, and
// GELU's input with a leading dimension of at least m divisible by 8.
bool lt_valid(const cublasLtMatmulDescOpaque_t& d, const cublasLtMatrixLayoutOpaque_t& a,
              const cublasLtMatrixLayoutOpaque_t& b, const cublasLtMatrixLayoutOpaque_t& c,
              const cublasLtMatrixLayoutOpaque_t& out) {
  const std::uint64_t m = out.rows, n = out.cols;
  const std::uint64_t k = d.ta == CUBLAS_OP_N ? a.cols : a.rows;
  const bool shapes = (d.ta == CUBLAS_OP_N ? a.rows : a.cols) == m &&
                      (d.tb == CUBLAS_OP_N ? b.rows : b.cols) == k &&
                      (d.tb == CUBLAS_OP_N ? b.cols : b.rows) == n && c.rows == m && c.cols == n &&
                      a.type == b.type && c.type == out.type;
  const Epilogue& e = d.epilogue;
  // A bf16 output with the plain, bias and GELU-gradient epilogues only
  // (what Borealis asks for).
  const bool output = out.type == CUDA_R_32F ||
                      (out.type == CUDA_R_16BF &&
                       (e.kind == CUBLASLT_EPILOGUE_DEFAULT || e.kind == CUBLASLT_EPILOGUE_BIAS ||
                        e.kind == CUBLASLT_EPILOGUE_DGELU));
  const bool bias = e.kind != CUBLASLT_EPILOGUE_BIAS && e.kind != CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                        ? true
                        : e.bias != nullptr;
  const bool aux =
      e.kind == CUBLASLT_EPILOGUE_DEFAULT || e.kind == CUBLASLT_EPILOGUE_BIAS
          ? true
          : e.aux != nullptr && e.ldaux >= static_cast<std::int64_t>(m) && e.ldaux % 8 == 0;
  return shapes && output && bias && aux;
}

}  // namespace

std::uint64_t borealis::cuda_emulator::lt_matmuls() {
  return g_lt_matmuls.load();
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = new cublasLtMatmulDescOpaque_t();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attribute,
                                              const void* value, std::size_t bytes) {
  // Each attribute's value has cublasLt.h's type: a wrong size is an error.
  const auto take = [&](auto& field) {
    if (bytes != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, value, bytes);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attribute) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return take(desc->ta);
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return take(desc->tb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return take(desc->epilogue.kind);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return take(desc->epilogue.bias);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      return take(desc->epilogue.aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      return take(desc->epilogue.ldaux);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return take(desc->epilogue.bias_data_type);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          std::uint64_t rows, std::uint64_t cols, std::int64_t ld) {
  if (ld < static_cast<std::int64_t>(std::max<std::uint64_t>(rows, 1))) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = new cublasLtMatmulPreferenceOpaque_t();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attribute,
                                                    const void* value, std::size_t bytes) {
  if (attribute == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    if (bytes != sizeof(std::uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::uint64_t v = 0;
    std::memcpy(&v, value, bytes);
    pref->workspace = static_cast<std::size_t>(v);
    return CUBLAS_STATUS_SUCCESS;
  }
  const int i = attribute - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES;
  if (i < 0 || i > 3 || bytes != sizeof(std::uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&pref->align[i], value, bytes);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (requested < 1 || pref == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *returned = 0;
  if (!lt_valid(*desc, *a, *b, *c, *d)) return CUBLAS_STATUS_NOT_SUPPORTED;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  for (int i = 0; i < 4; ++i) results[0].algo.data[i] = pref->align[i];  // what it assumes
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a, const void* B,
                              cublasLtMatrixLayout_t b, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void*, std::size_t, cudaStream_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (algo == nullptr || !lt_valid(*desc, *a, *b, *c, *d) || c->ld != d->ld) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const auto m = static_cast<int>(d->rows), n = static_cast<int>(d->cols);
  const auto k = static_cast<int>(desc->ta == CUBLAS_OP_N ? a->cols : a->rows);
  Epilogue e = desc->epilogue;
  e.bias_type = e.bias_data_type == -1 ? d->type : static_cast<cudaDataType>(e.bias_data_type);
  e.aux_type = d->type;  // (CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE left unset)
  const void* operands[4] = {A, B, C, D};
  for (int i = 0; i < 4; ++i) {
    if (reinterpret_cast<std::uintptr_t>(operands[i]) % algo->data[i] != 0) {
      throw std::runtime_error(std::string("emulated cuBLASLt: operand ") + "ABCD"[i] +
                               " is less aligned than the " + std::to_string(algo->data[i]) +
                               " bytes the heuristic was told");
    }
  }
  const std::size_t bias_bytes = e.bias_type == CUDA_R_16BF ? 2 : 4;
  if (e.bias != nullptr && !borealis::cuda_emulator::is_device(e.bias, bias_bytes * m)) {
    throw std::runtime_error("emulated cuBLASLt: the bias is not m values of device memory");
  }
  if (e.aux != nullptr)
    check_operand("cublasLtMatmul", "aux", e.aux, e.aux_type, m, n, static_cast<int>(e.ldaux));
  ++g_lt_matmuls;
  const float b_value = *static_cast<const float*>(beta);
  if (d->type == CUDA_R_16BF) {
    // The product and epilogue in fp32, rounded to bf16 as they are stored.
    if (b_value != 0.0f) return CUBLAS_STATUS_NOT_SUPPORTED;
    check_operand("cublasLtMatmul", "D", D, CUDA_R_16BF, m, n, static_cast<int>(d->ld));
    const std::int64_t ld = d->ld;
    const std::size_t extent = static_cast<std::size_t>(ld * (n - 1) + m);
    // The fp32 product in device memory of its own (where gemm checks its
    // operands), then rounded into D.
    float* product = nullptr;
    if (cudaMalloc(&product, extent * sizeof(float)) != cudaSuccess) {
      return CUBLAS_STATUS_ALLOC_FAILED;
    }
    const cublasStatus_t r =
        gemm("cublasLtMatmul", true, desc->ta, desc->tb, m, n, k, *static_cast<const float*>(alpha),
             A, a->type, static_cast<int>(a->ld), B, b->type, static_cast<int>(b->ld), 0.0f,
             product, static_cast<int>(ld), e);
    if (r == CUBLAS_STATUS_SUCCESS) {
      auto* out = static_cast<__nv_bfloat16*>(D);
      for (int j = 0; j < n; ++j) {
        for (int i = 0; i < m; ++i) out[i + j * ld] = __float2bfloat16(product[i + j * ld]);
      }
    }
    cudaFree(product);
    return r;
  }
  if (C != D && b_value != 0.0f) {
    // D = alpha AB + beta C: C first copied into D (checked as D's extent).
    check_operand("cublasLtMatmul", "C", C, CUDA_R_32F, m, n, static_cast<int>(c->ld));
    check_operand("cublasLtMatmul", "D", D, CUDA_R_32F, m, n, static_cast<int>(d->ld));
    for (int j = 0; j < n; ++j) {
      std::memcpy(static_cast<float*>(D) + std::int64_t{j} * d->ld,
                  static_cast<const float*>(C) + std::int64_t{j} * c->ld, sizeof(float) * m);
    }
  }
  return gemm("cublasLtMatmul", true, desc->ta, desc->tb, m, n, k,
              *static_cast<const float*>(alpha), A, a->type, static_cast<int>(a->ld), B, b->type,
              static_cast<int>(b->ld), b_value, static_cast<float*>(D), static_cast<int>(d->ld), e);
}
