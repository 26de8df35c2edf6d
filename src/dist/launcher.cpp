#include "dist/launcher.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "core/error.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "dist/communicator.h"
#include "dist/launch_env.h"

namespace borealis {

namespace {

// Leading integer of a Slurm count such as "4" or "4(x2)"; 0 if none.
int leading_int(const std::optional<std::string>& text) {
  if (!text) return 0;
  int value = 0;
  for (char c : *text) {
    if (c < '0' || c > '9') break;
    value = value * 10 + (c - '0');
    if (value > 1'000'000) break;
  }
  return value;
}

std::string join_hosts(const std::vector<std::string>& hosts) {
  constexpr std::size_t kShown = 4;
  std::string out;
  for (std::size_t i = 0; i < std::min(hosts.size(), kShown); ++i) {
    out += (i ? "," : "") + hosts[i];
  }
  if (hosts.size() > kShown) out += fmt::format(",... ({} more)", hosts.size() - kShown);
  return out;
}

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

}  // namespace

std::string mpi_flavor_from_version(std::string_view text) {
  const auto has = [&](std::string_view s) { return text.find(s) != std::string_view::npos; };
  if (has("Open MPI") || has("OpenRTE") || has("open-mpi.org")) return "openmpi";
  if (has("PALS") || has("Cray")) return "pals";
  if (has("HYDRA") || has("Hydra") || has("MPICH") || has("Intel(R) MPI")) return "mpich";
  return "";
}

HostList read_hostfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_errno("cannot read hostfile", path, errno);
  HostList list;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string_view text = line;
    if (const auto hash = text.find('#'); hash != std::string_view::npos)
      text = text.substr(0, hash);
    text = trim(text);
    if (text.empty()) continue;
    std::string host(text.substr(0, text.find_first_of(" \t:")));
    int slots = 1;
    if (const auto colon = text.find(':'); colon != std::string_view::npos) {
      slots = leading_int(std::string(text.substr(colon + 1)));
    } else if (const auto s = text.find("slots="); s != std::string_view::npos) {
      slots = leading_int(std::string(text.substr(s + 6)));
    }
    if (host.empty() || slots <= 0) {
      throw Error(fmt::format("cannot parse hostfile line '{}'", line),
                  fmt::format("{}:{}", path, number));
    }
    const auto it = std::find(list.hosts.begin(), list.hosts.end(), host);
    if (it == list.hosts.end()) {
      list.hosts.push_back(host);
      list.slots.push_back(slots);
    } else {
      list.slots[static_cast<std::size_t>(it - list.hosts.begin())] += slots;
    }
  }
  if (list.hosts.empty()) throw Error("hostfile lists no hosts", path);
  return list;
}

LaunchPlan plan_launch(const LaunchOptions& o, const LaunchContext& ctx) {
  if (o.command.empty()) throw Error("no command to launch; put it after --", "launch");
  LaunchPlan plan;
  int available = 1;     // nodes
  int slots = 0;         // ranks per node the allocation suggests; 0: none
  int sched_cores = 0;   // cores per node the scheduler reports
  std::string hostfile;  // passed to mpiexec
  const bool slurm = o.hostfile.empty() && ctx.getenv("SLURM_JOB_ID").has_value() &&
                     (ctx.getenv("SLURM_JOB_NODELIST") || ctx.getenv("SLURM_NNODES"));
  const auto pbs_nodefile = ctx.getenv("PBS_NODEFILE");
  if (!o.hostfile.empty()) {
    plan.source = "hostfile";
    const HostList list = read_hostfile(o.hostfile);
    available = static_cast<int>(list.hosts.size());
    slots = list.slots.front();
    plan.hosts = join_hosts(list.hosts);
    hostfile = o.hostfile;
  } else if (slurm) {
    plan.source = "Slurm";
    available = leading_int(ctx.getenv("SLURM_JOB_NUM_NODES"));
    if (available == 0) available = std::max(1, leading_int(ctx.getenv("SLURM_NNODES")));
    slots = leading_int(ctx.getenv("SLURM_NTASKS_PER_NODE"));
    sched_cores = leading_int(ctx.getenv("SLURM_CPUS_ON_NODE"));
    plan.hosts = ctx.getenv("SLURM_JOB_NODELIST").value_or("?");
  } else if (pbs_nodefile) {
    plan.source = "PBS";
    const HostList list = read_hostfile(*pbs_nodefile);
    available = static_cast<int>(list.hosts.size());
    slots = list.slots.front() > 1 ? list.slots.front() : 0;
    sched_cores = leading_int(ctx.getenv("NCPUS"));
    plan.hosts = join_hosts(list.hosts);
    hostfile = *pbs_nodefile;
  } else {
    plan.source = "local";
    plan.hosts = ctx.local_host;
  }

  if (o.ranks < 0) throw Error("the rank count must be positive", "-n");
  if (o.ppn < 0) throw Error("the ranks per node must be positive", "--ppn");
  if (o.ppn > 0 && o.ranks > 0) {
    plan.ppn = o.ppn;
    plan.ranks = o.ranks;
    plan.nodes = ceil_div(o.ranks, o.ppn);
  } else if (o.ppn > 0) {
    plan.ppn = o.ppn;
    plan.nodes = available;
    plan.ranks = o.ppn * available;
  } else if (o.ranks > 0) {
    plan.ranks = o.ranks;
    plan.nodes = std::min(available, o.ranks);
    plan.ppn = ceil_div(o.ranks, plan.nodes);
  } else {
    plan.ppn = std::max(slots, 1);
    plan.nodes = available;
    plan.ranks = plan.ppn * available;
  }
  if (plan.nodes > available) {
    throw Error(fmt::format("{} ranks at {} per node need {} nodes; the {} allocation has {}",
                            plan.ranks, plan.ppn, plan.nodes, plan.source, available),
                "-n");
  }
  plan.cores_per_node =
      o.cores_per_node > 0 ? o.cores_per_node : (sched_cores > 0 ? sched_cores : ctx.local_cores);
  plan.threads =
      o.threads_per_rank > 0 ? o.threads_per_rank : std::max(1, plan.cores_per_node / plan.ppn);

  plan.flavor = o.mpi;
  if (plan.flavor == "auto") {
    if (slurm) {
      plan.flavor = "srun";
    } else {
      const std::string version = ctx.mpiexec_version ? ctx.mpiexec_version() : std::string();
      plan.flavor = mpi_flavor_from_version(version);
      if (plan.flavor.empty()) {
        throw Error(fmt::format("cannot tell which MPI '{} --version' belongs to; pass --mpi "
                                "openmpi, mpich, pals or srun",
                                ctx.mpiexec),
                    "--mpi");
      }
    }
  }

  const std::string n = std::to_string(plan.ranks);
  const std::string p = std::to_string(plan.ppn);
  const std::string t = std::to_string(plan.threads);
  const bool fits = plan.ppn * plan.threads <= plan.cores_per_node;
  auto& a = plan.argv;
  if (plan.flavor == "srun") {
    a = {"srun",
         "--nodes=" + std::to_string(plan.nodes),
         "--ntasks=" + n,
         "--ntasks-per-node=" + p,
         "--cpus-per-task=" + t,
         "--cpu-bind=" + std::string(fits ? "cores" : "none"),
         "--export=ALL,OMP_NUM_THREADS=" + t};
  } else if (plan.flavor == "openmpi") {
    a = {ctx.mpiexec, "-n", n};
    if (fits) {
      a.insert(a.end(), {"--map-by", "ppr:" + p + ":node:PE=" + t, "--bind-to", "core"});
    } else {
      a.insert(a.end(), {"--map-by", "ppr:" + p + ":node", "--bind-to", "none", "--oversubscribe"});
    }
    if (!hostfile.empty()) a.insert(a.end(), {"--hostfile", hostfile});
    a.insert(a.end(), {"-x", "OMP_NUM_THREADS=" + t});
    for (const std::string& name : o.export_env) a.insert(a.end(), {"-x", name});
  } else if (plan.flavor == "mpich") {
    a = {ctx.mpiexec, "-n", n, "-ppn", p};
    if (!hostfile.empty()) a.insert(a.end(), {"-f", hostfile});
    if (fits) a.insert(a.end(), {"-bind-to", "core:" + t});
    a.insert(a.end(), {"-genv", "OMP_NUM_THREADS", t});
  } else if (plan.flavor == "pals") {
    a = {ctx.mpiexec, "-n", n, "--ppn", p};
    if (!hostfile.empty()) a.insert(a.end(), {"--hostfile", hostfile});
    if (fits) a.insert(a.end(), {"--depth", t, "--cpu-bind", "depth"});
    a.insert(a.end(), {"--env", "OMP_NUM_THREADS=" + t});
  } else {
    throw Error(fmt::format("unknown launcher '{}' (auto, openmpi, mpich, pals, srun)", o.mpi),
                "--mpi");
  }
  a.insert(a.end(), o.command.begin(), o.command.end());
  return plan;
}

std::string shell_join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& arg : argv) {
    if (!out.empty()) out += ' ';
    const bool plain = !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             std::string_view("_-./=:,+@%").find(c) != std::string_view::npos;
    });
    if (plain) {
      out += arg;
      continue;
    }
    out += '\'';
    for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    out += '\'';
  }
  return out;
}

std::string describe_launch(const LaunchPlan& plan) {
  return fmt::format(
      "launch: {} ({}), {} rank{} on {} node{}, {} per node, {} thread{} per rank ({} cores per "
      "node), {}\n{}\n",
      plan.source, plan.hosts, plan.ranks, plan.ranks == 1 ? "" : "s", plan.nodes,
      plan.nodes == 1 ? "" : "s", plan.ppn, plan.threads, plan.threads == 1 ? "" : "s",
      plan.cores_per_node, plan.flavor, shell_join(plan.argv));
}

std::string describe_launch_layout(const LaunchPlan& plan, int tensor, int pipeline,
                                   const std::string& where) {
  if (tensor < 1 || pipeline < 1 || plan.ranks % (tensor * pipeline) != 0) {
    throw Error(fmt::format("dist.tensor_parallel x dist.pipeline_parallel = {} x {} does not "
                            "divide the {} ranks of the launch",
                            tensor, pipeline, plan.ranks),
                where);
  }
  const int data = plan.ranks / (tensor * pipeline);
  std::string line = fmt::format(
      "layout: tensor parallel {} x data parallel {} x pipeline parallel "
      "{} on {} node{} of {} rank{}",
      tensor, data, pipeline, plan.nodes, plan.nodes == 1 ? "" : "s", plan.ppn,
      plan.ppn == 1 ? "" : "s");
  if (tensor > 1 && plan.nodes > 1 && plan.ppn % tensor != 0) {
    const int up = (plan.ppn + tensor - 1) / tensor * tensor;
    return line + fmt::format(
                      "\nwarning: --ppn {} is not a multiple of dist.tensor_parallel = {}: some "
                      "tensor groups span two nodes and run their collectives over the "
                      "network; use --ppn {}{}\n",
                      plan.ppn, tensor, up,
                      plan.ppn > tensor ? fmt::format(" or {}", up - tensor) : "");
  }
  if (tensor > 1) line += plan.nodes > 1 ? "; each tensor group within one node" : "";
  if (pipeline > 1 && plan.nodes > 1) {
    const int stage_ranks = tensor * data;
    line +=
        stage_ranks % plan.ppn == 0
            ? fmt::format("; each pipeline stage on {} node(s) of its own", stage_ranks / plan.ppn)
            : "; pipeline stages share nodes";
  }
  return line + "\n";
}

std::optional<TrainCommand> find_train_command(const std::vector<std::string>& command) {
  for (std::size_t i = 0; i + 1 < command.size(); ++i) {
    const std::string& program = command[i];
    const std::string base = program.substr(program.rfind('/') + 1);
    if (base != "borealis" || command[i + 1] != "train") continue;
    TrainCommand t;
    for (std::size_t k = i + 2; k < command.size(); ++k) {
      const std::string& a = command[k];
      if (a == "--set") {
        // CLI11 takes the values up to the next option.
        while (k + 1 < command.size() && !command[k + 1].starts_with("-") &&
               command[k + 1].find('=') != std::string::npos) {
          t.overrides.push_back(command[++k]);
        }
      } else if (a.starts_with("--set=")) {
        t.overrides.push_back(a.substr(6));
      } else if (!a.starts_with("-") && t.config.empty()) {
        t.config = a;
      } else if (a == "--run-dir" || a == "--steps" || a == "--stop-at-step" || a == "--resume") {
        ++k;  // an option's value, not the config
      }
    }
    if (t.config.empty()) return std::nullopt;
    return t;
  }
  return std::nullopt;
}

LaunchContext current_launch_context() {
  LaunchContext ctx;
  ctx.getenv = [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr || *value == '\0') return std::nullopt;
    return std::string(value);
  };
  ctx.local_host = local_host_name();
  ctx.local_cores = static_cast<int>(std::max(1U, cpu_info().usable));
  const MpiInfo mpi = mpi_info();
  if (!mpi.mpiexec.empty()) {
    ctx.mpiexec = mpi.mpiexec.substr(mpi.mpiexec.rfind('/') + 1);
  }
  ctx.mpiexec_version = [program = ctx.mpiexec]() {
    std::string text;
    FILE* pipe = ::popen((program + " --version 2>&1").c_str(), "r");
    if (pipe == nullptr) return text;
    char buffer[512];
    std::size_t got = 0;
    while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) text.append(buffer, got);
    ::pclose(pipe);
    return text;
  };
  return ctx;
}

void exec_launch(const LaunchPlan& plan) {
  std::vector<char*> args;
  for (const auto& a : plan.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  ::execvp(args[0], args.data());
  throw_errno(fmt::format("cannot run {}", plan.argv.front()), plan.argv.front(), errno);
}

}  // namespace borealis
