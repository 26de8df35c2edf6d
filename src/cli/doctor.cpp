// borealis doctor: what a user needs to know about this machine before a
// run, and whether it meets the run's requirements. Prints one line per
// check; exits non-zero, naming the failed checks, when a requirement is not
// met.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "core/threads.h"
#include "dist/comm_bench.h"
#include "dist/communicator.h"
#include "dist/launch_env.h"
#include "kernels/cpu/blas.h"
#ifdef BOREALIS_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif
#include "kernels/cuda/device_info.h"
#include "kernels/make_backend.h"
#include "train/parallel_groups.h"

namespace borealis::cli {

namespace {

enum class Status { Info, Ok, Warn, Fail };

const char* status_name(Status s) {
  switch (s) {
    case Status::Info:
      return "info";
    case Status::Ok:
      return "ok";
    case Status::Warn:
      return "warn";
    case Status::Fail:
      return "FAIL";
  }
  return "?";
}

struct Check {
  Check(std::string n, std::string d, Status s = Status::Info)
      : name(std::move(n)), detail(std::move(d)), status(s) {}

  std::string name;
  std::string detail;
  Status status;
  std::string note;  // why it warns or fails
};

struct DoctorOptions {
  std::string path = ".";
  std::string min_free_disk = "1G";
  std::string min_memory = "1G";
  std::vector<std::string> require;
  bool json = false;
  bool dist = false;
  std::string dist_min_size = "4K";
  std::string dist_max_size = "64M";
  double dist_timeout = 60;
  int tensor_parallel = 1;          // --dist: also measure within tensor groups of this size
  int pipeline_parallel = 1;        // and between the stages of pipelines of this many
  std::string dist_device = "cpu";  // --dist: cpu (MPI) or cuda (NCCL between the GPUs) buffers
};

bool required(const DoctorOptions& o, const std::string& what) {
  for (const auto& r : o.require) {
    if (r == what) return true;
  }
  return false;
}

std::vector<Check> run_checks(const DoctorOptions& o) {
  std::vector<Check> checks;
  const std::uint64_t min_disk = parse_bytes(o.min_free_disk, "--min-free-disk");
  const std::uint64_t min_memory = parse_bytes(o.min_memory, "--min-memory");

  const CpuInfo cpu = cpu_info();
  checks.emplace_back("cpu", fmt::format("{}, {} logical CPUs online, {} usable by this process",
                                         cpu.model, cpu.online, cpu.usable));

  Check simd{"simd",
             fmt::format("CPU supports {}, binary built for {}", cpu.simd_cpu, cpu.simd_build),
             Status::Ok};
  if (!cpu.simd_build_supported) {
    simd.status = Status::Fail;
    simd.note = "this CPU lacks instructions the binary uses; rebuild on this machine";
  }
  for (const char* level : {"avx2", "avx512"}) {
    const bool have = std::string(level) == "avx2"
                          ? (cpu.simd_cpu == "avx2+fma" || cpu.simd_cpu == "avx512")
                          : cpu.simd_cpu == "avx512";
    if (required(o, level) && !have) {
      simd.status = Status::Fail;
      simd.note = fmt::format("{} required (--require) but the CPU does not support it", level);
    }
  }
  checks.push_back(simd);

  const MemoryInfo mem = memory_info();
  Check memory{
      "memory",
      fmt::format(
          "{} total, {} available{}", format_bytes(mem.total), format_bytes(mem.available),
          mem.cgroup_limit ? ", container limit " + format_bytes(mem.cgroup_limit) : std::string()),
      Status::Ok};
  if (mem.usable() < min_memory) {
    memory.status = Status::Fail;
    memory.note = fmt::format("{} usable, below --min-memory {}", format_bytes(mem.usable()),
                              format_bytes(min_memory));
  }
  checks.push_back(memory);

  std::string where = std::filesystem::absolute(o.path).lexically_normal().string();
  if (where.size() > 1 && where.back() == '/') where.pop_back();
  const DiskInfo disk = disk_info(o.path);
  Check dsk{
      "disk",
      fmt::format("{}: {} free of {}", where, format_bytes(disk.free), format_bytes(disk.total)),
      Status::Ok};
  if (disk.free < min_disk) {
    dsk.status = Status::Fail;
    dsk.note = fmt::format("{} free at {}, below --min-free-disk {}", format_bytes(disk.free),
                           where, format_bytes(min_disk));
  }
  checks.push_back(dsk);

  const BlasInfo blas = blas_info();
  const int threads = cpu_threads();
  const char* omp_env = std::getenv("OMP_NUM_THREADS");
  Check thr{"threads",
            fmt::format("{} OpenMP, {} BLAS (OMP_NUM_THREADS={})", threads, blas.threads,
                        omp_env ? omp_env : "unset"),
            Status::Ok};
  if (static_cast<unsigned>(threads) > cpu.usable) {
    thr.status = Status::Warn;
    thr.note = fmt::format(
        "{} threads on {} usable CPUs oversubscribes them; set --threads or "
        "OMP_NUM_THREADS",
        threads, cpu.usable);
  }
  checks.push_back(thr);

  Check bl{"blas",
           fmt::format("{}, {} threading, {} kernels{}", blas.library, blas.threading, blas.core,
                       blas.coretype_override.empty()
                           ? std::string()
                           : " (forced by OPENBLAS_CORETYPE=" + blas.coretype_override + ")"),
           Status::Ok};
  const std::string blas_simd = blas_core_simd(blas.core);
  if ((cpu.simd_cpu == "avx2+fma" || cpu.simd_cpu == "avx512") &&
      (blas_simd == "sse" || blas_simd == "avx")) {
    bl.status = Status::Warn;
    bl.note = fmt::format(
        "OpenBLAS chose {} kernels ({}) on a CPU with {}: it does not recognise this CPU and GEMMs "
        "run several times slower; set OPENBLAS_CORETYPE=Haswell (AVX2 kernels, safe on every AVX2 "
        "CPU)",
        blas.core, blas_simd, cpu.simd_cpu);
  } else if (blas.threading != "OpenMP") {
    bl.status = Status::Warn;
    bl.note =
        "BLAS is not the OpenMP build: its threads and the kernels' threads may oversubscribe; "
        "install libopenblas-openmp-dev";
  }
  checks.push_back(bl);

  const MpiInfo mpi = mpi_info();
  Check mp{"mpi",
           fmt::format("{}, launcher {}", mpi.library.empty() ? "unknown library" : mpi.library,
                       mpi.mpiexec.empty() ? "not found on PATH" : mpi.mpiexec),
           Status::Ok};
  if (mpi.mpiexec.empty()) {
    mp.status = required(o, "mpi") ? Status::Fail : Status::Warn;
    mp.note = "no mpiexec or mpirun on PATH: multi-process runs need one (Debian: openmpi-bin)";
  }
  checks.push_back(mp);

  const LaunchEnv launch = detect_launch_env();
  checks.emplace_back(
      "launch", fmt::format("scheduler {}{}, {}rank {} of {}, local rank {} of {}",
                            launch.scheduler.empty() ? "none" : launch.scheduler,
                            launch.job_id.empty() ? "" : " (job " + launch.job_id + ")",
                            launch.launcher.empty() ? "started directly, "
                                                    : "launcher " + launch.launcher + ", ",
                            launch.rank, launch.world_size, launch.local_rank, launch.local_size));

  const CudaInfo cuda = cuda_info();
  std::string devices;
  for (const auto& d : cuda.devices) {
    devices +=
        fmt::format("{}[{}] {} ({}, sm_{}{}, {} SMs)", devices.empty() ? "" : "; ", d.index, d.name,
                    format_bytes(d.memory), d.compute_major, d.compute_minor, d.multiprocessors);
  }
  std::string versions;
  if (cuda.compiled) {
    versions = fmt::format("runtime {}, driver {}: ", cuda.runtime_version,
                           cuda.driver_version.empty() ? "none" : cuda.driver_version);
  }
  Check cu{"cuda", versions + (devices.empty() ? cuda.status : devices),
           cuda.devices.empty() ? Status::Info : Status::Ok};
  if (required(o, "cuda") && cuda.devices.empty()) {
    cu.status = Status::Fail;
    cu.note = "CUDA required (--require cuda) but no device is usable";
  }
  checks.push_back(cu);
#ifdef BOREALIS_HAVE_NCCL
  const bool nccl = nccl_unavailable_reason().empty();
  checks.emplace_back("nccl", nccl_summary() + (nccl ? ": data parallelism between GPUs" : ""),
                      nccl ? Status::Ok : Status::Info);
#else
  checks.emplace_back("nccl", "not in this build: no data parallelism between GPUs");
#endif
  return checks;
}

// doctor --dist --tensor-parallel T --pipeline-parallel P: the groups a
// training run of that layout makes (tensor-parallel innermost, then data,
// then pipeline, as `borealis train` orders ranks), the hosts each tensor
// group spans, the allreduce bandwidth within the tensor groups (all of them
// at once, as in training) and the exchange bandwidth between neighbouring
// stages.
void run_layout_checks(const DoctorOptions& o, Communicator& world, std::size_t min_size,
                       std::size_t max_size) {
  const int T = o.tensor_parallel, P = o.pipeline_parallel, n = world.size();
  // The groups `borealis train` makes for this layout.
  ParallelGroups groups(world, rank_layout(n, world.rank(), T, P, "--tensor-parallel"));
  const int D = groups.layout().data;
  const bool root = world.rank() == 0;
  if (root) {
    std::string spans;
    for (int g = 0; g < n / T; ++g) {
      std::vector<std::string> hosts;
      for (int t = 0; t < T; ++t) {
        const std::string& h = world.host(g * T + t);
        if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
      }
      if (hosts.size() > 1) {
        spans += fmt::format("{}ranks {}..{} on {}", spans.empty() ? "" : "; ", g * T,
                             g * T + T - 1, fmt::join(hosts, ", "));
      }
    }
    std::cout << fmt::format(
        "layout: tensor parallel {} x data parallel {} x pipeline parallel {}; {}\n", T, D, P,
        spans.empty() ? "every tensor group within one host"
                      : "warning: tensor groups span hosts (" + spans + ")");
    std::cout.flush();
  }
  if (T > 1) {
    const auto points = allreduce_bandwidth(groups.tensor(), min_size, max_size);
    if (root) {
      std::cout << fmt::format("allreduce within the tensor groups of {} ranks (all at once):\n", T)
                << format_bandwidth_table(points);
      std::cout.flush();
    }
  }
  if (P > 1) {
    const auto points = sendrecv_bandwidth(groups.pipeline(), min_size, max_size);
    if (root) {
      std::cout << fmt::format(
                       "exchange between pipeline stages 2k and 2k + 1 (every pipeline at once, "
                       "each direction):\n")
                << format_bandwidth_table(points);
      std::cout.flush();
    }
  }
}

// doctor --dist --dist-device cuda: NCCL between the ranks' GPUs, each rank
// on the GPU of its local rank: the start-up, then the allreduce bandwidth
// on GPU memory, as nccl-tests' all_reduce_perf reports it.
void run_gpu_dist_checks(Communicator& world, std::size_t min_size, std::size_t max_size) {
  const int gpu = cuda_device_of_local_rank();
  const auto backend = make_backend("cuda", "--dist-device", Precision::kFp32, "", gpu);
  const auto start = std::chrono::steady_clock::now();
  const auto nccl = make_gpu_communicator(world, gpu, "--dist-device");
  nccl->barrier();
  double init = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  world.allreduce(std::span<double>(&init, 1), ReduceOp::Max);
  const bool root = world.rank() == 0;
  if (root) {
    std::cout << fmt::format("nccl: {} rank(s) up in {:.2f} s (the slowest), rank 0 on GPU {}\n",
                             world.size(), init, gpu);
    std::cout.flush();
  }
  if (world.size() == 1) return;
  const auto points = allreduce_bandwidth(*nccl, *backend, world, min_size, max_size);
  if (root) {
    std::cout << fmt::format("allreduce (float32 average) over NCCL between {} GPUs:\n",
                             world.size())
              << format_bandwidth_table(points);
    std::cout.flush();
  }
}

// doctor --dist: an MPI smoke test. Every rank reports its host, pid,
// start-up and compute time; rank 0 prints them, the slowest rank and the
// allreduce bandwidth over message sizes.
void run_dist_checks(const DoctorOptions& o) {
  const std::uint64_t min_size = parse_bytes(o.dist_min_size, "--dist-min-size");
  const std::uint64_t max_size = parse_bytes(o.dist_max_size, "--dist-max-size");
  if (min_size == 0 || min_size > max_size) {
    throw Error("need 0 < --dist-min-size <= --dist-max-size", "--dist-min-size");
  }
  CommOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<long>(o.dist_timeout * 1000));
  const auto start = std::chrono::steady_clock::now();
  auto comm = make_communicator(options);
  const double init =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto reports = gather_rank_reports(*comm, init);
  const bool root = comm->rank() == 0;
  if (root) {
    std::cout << fmt::format("dist: {} backend, {} rank(s), {} reductions, time-out {:.0f} s\n",
                             comm->backend(), comm->size(),
                             reduce_algorithm_name(comm->reduce_algorithm()), o.dist_timeout)
              << format_rank_reports(reports);
    std::cout.flush();
  }
  if (o.dist_device == "cuda") run_gpu_dist_checks(*comm, min_size, max_size);
  if (comm->size() == 1) {
    if (root) {
      std::cout << "dist: one rank, no bandwidth to measure; run it on several, e.g. "
                   "'borealis launch -n 2 -- borealis doctor --dist'\n";
    }
    return;
  }
  const auto points = allreduce_bandwidth(*comm, min_size, max_size);
  if (root) {
    std::cout << fmt::format("allreduce (float32 average) over {} ranks:\n", comm->size())
              << format_bandwidth_table(points);
    std::cout.flush();
  }
  if (o.tensor_parallel > 1 || o.pipeline_parallel > 1) {
    run_layout_checks(o, *comm, min_size, max_size);
  }
}

}  // namespace

Command add_doctor(CLI::App& parent) {
  auto o = std::make_shared<DoctorOptions>();
  CLI::App* app = parent.add_subcommand(
      "doctor",
      "Check this machine before a run: cores, memory, SIMD, BLAS and threads, MPI, CUDA devices, "
      "free disk. Exits 1 naming the checks that fail.");
  app->add_option("--path", o->path,
                  "Directory whose free disk space to check (run or data directory)")
      ->capture_default_str()
      ->check(CLI::ExistingDirectory);
  app->add_option("--min-free-disk", o->min_free_disk,
                  "Fail when less disk is free at --path (e.g. 500G)")
      ->capture_default_str();
  app->add_option("--min-memory", o->min_memory, "Fail when less memory is available (e.g. 16G)")
      ->capture_default_str();
  app->add_option("--require", o->require, "Also require these: mpi, cuda, avx2, avx512")
      ->delimiter(',')
      ->check(CLI::IsMember({"mpi", "cuda", "avx2", "avx512"}));
  app->add_flag("--json", o->json, "Print one JSON object instead of text");
  app->add_flag("--dist", o->dist,
                "MPI smoke test instead of the machine checks: per rank host, pid, start-up and "
                "compute time, the slowest rank, allreduce bandwidth (run under mpiexec/launch)");
  app->add_option("--dist-min-size", o->dist_min_size, "Smallest allreduce of --dist")
      ->capture_default_str();
  app->add_option("--dist-max-size", o->dist_max_size, "Largest allreduce of --dist")
      ->capture_default_str();
  app->add_option("--dist-device", o->dist_device,
                  "With --dist: also start NCCL between the ranks' GPUs (cuda; a GPU per rank by "
                  "local rank) and measure its allreduce on GPU memory")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app->add_option("--tensor-parallel", o->tensor_parallel,
                  "With --dist: also measure within the tensor groups of this size, as a "
                  "training run with dist.tensor_parallel makes them")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--pipeline-parallel", o->pipeline_parallel,
                  "With --dist: also measure between neighbouring stages of pipelines of this "
                  "many stages (dist.pipeline_parallel)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--dist-timeout", o->dist_timeout,
                  "Seconds before a rank that does not answer fails --dist")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  return {app, [o] {
            if (o->dist) {
              run_dist_checks(*o);
              return;
            }
            const std::vector<Check> checks = run_checks(*o);
            std::vector<std::string> failures;
            int warnings = 0;
            for (const auto& c : checks) {
              if (c.status == Status::Fail) failures.push_back(c.name + ": " + c.note);
              if (c.status == Status::Warn) ++warnings;
            }
            if (o->json) {
              nlohmann::json j = nlohmann::json::array();
              for (const auto& c : checks) {
                j.push_back({{"check", c.name},
                             {"status", status_name(c.status)},
                             {"detail", c.detail},
                             {"note", c.note}});
              }
              std::cout << nlohmann::json{{"checks", j}, {"ok", failures.empty()}}.dump(2) << '\n';
            } else {
              for (const auto& c : checks) {
                std::cout << fmt::format("{:<8} {:<4}  {}\n", c.name, status_name(c.status),
                                         c.detail);
                if (!c.note.empty()) std::cout << fmt::format("{:<14}  -> {}\n", "", c.note);
              }
              std::cout << fmt::format("doctor: {} checks, {} warning(s), {} failed\n",
                                       checks.size(), warnings, failures.size());
            }
            std::cout.flush();
            if (!failures.empty()) {
              std::string reasons;
              for (const auto& f : failures) reasons += (reasons.empty() ? "" : "; ") + f;
              throw Error(fmt::format("{} requirement(s) not met: {}", failures.size(), reasons),
                          "doctor");
            }
          }};
}

}  // namespace borealis::cli
