#include "dist/launcher.h"

#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::error_line;
using test::TempDir;
using test::write_file;

struct Fake {
  std::map<std::string, std::string> env;
  std::string version =
      "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n";

  LaunchContext context() const {
    LaunchContext ctx;
    ctx.getenv = [env = env](const std::string& name) -> std::optional<std::string> {
      const auto it = env.find(name);
      if (it == env.end()) return std::nullopt;
      return it->second;
    };
    ctx.local_host = "laptop";
    ctx.local_cores = 8;
    ctx.mpiexec_version = [v = version] { return v; };
    return ctx;
  }
};

LaunchOptions command(std::vector<std::string> extra = {}) {
  LaunchOptions o;
  o.command = {"borealis", "train", "run.toml"};
  o.command.insert(o.command.end(), extra.begin(), extra.end());
  return o;
}

TEST(Launcher, LocalMachineOpenMpi) {
  Fake fake;
  LaunchOptions o = command();
  o.ranks = 2;
  const LaunchPlan plan = plan_launch(o, fake.context());
  EXPECT_EQ(describe_launch(plan),
            "launch: local (laptop), 2 ranks on 1 node, 2 per node, 4 threads per rank (8 cores "
            "per node), openmpi\n"
            "mpiexec -n 2 --map-by ppr:2:node:PE=4 --bind-to core -x OMP_NUM_THREADS=4 borealis "
            "train run.toml\n");
}

TEST(Launcher, LocalDefaultsToOneRankWithAllCores) {
  Fake fake;
  const LaunchPlan plan = plan_launch(command(), fake.context());
  EXPECT_EQ(plan.ranks, 1);
  EXPECT_EQ(plan.threads, 8);
}

TEST(Launcher, OversubscribedLocalRunDoesNotBind) {
  Fake fake;
  LaunchOptions o = command();
  o.ranks = 16;
  const LaunchPlan plan = plan_launch(o, fake.context());
  EXPECT_EQ(shell_join(plan.argv),
            "mpiexec -n 16 --map-by ppr:16:node --bind-to none --oversubscribe -x "
            "OMP_NUM_THREADS=1 borealis train run.toml");
}

TEST(Launcher, PbsNodefileGivesHostsSlotsAndCores) {
  TempDir dir;
  write_file(dir / "nodes", "x1000c0s0b0n0\nx1000c0s0b0n0\nx1000c0s0b0n1\nx1000c0s0b0n1\n");
  Fake fake;
  fake.env = {
      {"PBS_JOBID", "123.polaris"}, {"PBS_NODEFILE", (dir / "nodes").string()}, {"NCPUS", "64"}};
  fake.version = "mpiexec version 1.2 (PALS)\n";
  const LaunchPlan plan = plan_launch(command(), fake.context());
  EXPECT_EQ(describe_launch(plan),
            "launch: PBS (x1000c0s0b0n0,x1000c0s0b0n1), 4 ranks on 2 nodes, 2 per node, 32 threads "
            "per rank (64 cores per node), pals\n"
            "mpiexec -n 4 --ppn 2 --hostfile " +
                (dir / "nodes").string() +
                " --depth 32 --cpu-bind depth --env OMP_NUM_THREADS=32 borealis train run.toml\n");
}

TEST(Launcher, PbsWithPpnAndMpich) {
  TempDir dir;
  write_file(dir / "nodes", "a\nb\nc\n");
  Fake fake;
  fake.env = {{"PBS_NODEFILE", (dir / "nodes").string()}};
  fake.version = "HYDRA build details:\n    Version:  4.0.2\n";
  LaunchOptions o = command();
  o.ppn = 4;
  const LaunchPlan plan = plan_launch(o, fake.context());
  EXPECT_EQ(shell_join(plan.argv), "mpiexec -n 12 -ppn 4 -f " + (dir / "nodes").string() +
                                       " -bind-to core:2 -genv OMP_NUM_THREADS 2 borealis train "
                                       "run.toml");
  EXPECT_EQ(plan.nodes, 3);
}

TEST(Launcher, SlurmUsesSrun) {
  Fake fake;
  fake.env = {{"SLURM_JOB_ID", "42"},
              {"SLURM_JOB_NODELIST", "nid[001-004]"},
              {"SLURM_JOB_NUM_NODES", "4"},
              {"SLURM_NTASKS_PER_NODE", "4(x4)"},
              {"SLURM_CPUS_ON_NODE", "128"}};
  fake.version = "unused";
  const LaunchPlan plan = plan_launch(command({"--steps", "10"}), fake.context());
  EXPECT_EQ(describe_launch(plan),
            "launch: Slurm (nid[001-004]), 16 ranks on 4 nodes, 4 per node, 32 threads per rank "
            "(128 cores per node), srun\n"
            "srun --nodes=4 --ntasks=16 --ntasks-per-node=4 --cpus-per-task=32 --cpu-bind=cores "
            "--export=ALL,OMP_NUM_THREADS=32 borealis train run.toml --steps 10\n");
}

TEST(Launcher, SlurmRanksSpreadOverNodes) {
  Fake fake;
  fake.env = {{"SLURM_JOB_ID", "42"}, {"SLURM_NNODES", "2"}};
  LaunchOptions o = command();
  o.ranks = 6;
  const LaunchPlan plan = plan_launch(o, fake.context());
  EXPECT_EQ(plan.nodes, 2);
  EXPECT_EQ(plan.ppn, 3);
  EXPECT_EQ(plan.threads, 2);  // 8 local cores: SLURM_CPUS_ON_NODE unset
  EXPECT_EQ(plan.flavor, "srun");
}

TEST(Launcher, HostfileFormatsAndQuoting) {
  TempDir dir;
  write_file(dir / "hosts", "# cluster\nnode1 slots=4\nnode2:4   # second\n\nnode1\n");
  const HostList list = read_hostfile((dir / "hosts").string());
  EXPECT_EQ(list.hosts, (std::vector<std::string>{"node1", "node2"}));
  EXPECT_EQ(list.slots, (std::vector<int>{5, 4}));

  Fake fake;
  LaunchOptions o = command({"--set", "run.name=a b"});
  o.hostfile = (dir / "hosts").string();
  o.ranks = 4;
  o.mpi = "openmpi";
  fake.version = "";  // not asked: --mpi given
  const LaunchPlan plan = plan_launch(o, fake.context());
  EXPECT_EQ(shell_join(plan.argv),
            "mpiexec -n 4 --map-by ppr:2:node:PE=4 --bind-to core "
            "--hostfile " +
                (dir / "hosts").string() +
                " -x OMP_NUM_THREADS=4 borealis train run.toml --set "
                "'run.name=a b'");
  EXPECT_EQ(shell_join({"it's"}), "'it'\\''s'");
}

TEST(Launcher, Errors) {
  TempDir dir;
  write_file(dir / "hosts", "a\nb\n");
  write_file(dir / "empty", "# nothing\n");
  write_file(dir / "bad", "a slots=x\n");
  Fake fake;
  LaunchOptions o = command();
  o.hostfile = (dir / "hosts").string();
  o.ranks = 9;
  o.ppn = 4;
  EXPECT_EQ(error_line([&] { plan_launch(o, fake.context()); }),
            "error: 9 ranks at 4 per node need 3 nodes; the hostfile allocation has 2 (-n)");
  o.hostfile = (dir / "empty").string();
  EXPECT_EQ(error_line([&] { plan_launch(o, fake.context()); }),
            "error: hostfile lists no hosts (" + o.hostfile + ")");
  o.hostfile = (dir / "bad").string();
  EXPECT_EQ(error_line([&] { plan_launch(o, fake.context()); }),
            "error: cannot parse hostfile line 'a slots=x' (" + o.hostfile + ":1)");
  o.hostfile.clear();
  o.ranks = 2;
  o.ppn = 0;
  fake.version = "some other launcher 1.0";
  EXPECT_EQ(error_line([&] { plan_launch(o, fake.context()); }),
            "error: cannot tell which MPI 'mpiexec --version' belongs to; pass --mpi openmpi, "
            "mpich, pals or srun (--mpi)");
  o.command.clear();
  EXPECT_EQ(error_line([&] { plan_launch(o, fake.context()); }),
            "error: no command to launch; put it after -- (launch)");
}

TEST(Launcher, FlavorFromVersionText) {
  EXPECT_EQ(mpi_flavor_from_version("mpirun (Open MPI) 5.0.3"), "openmpi");
  EXPECT_EQ(mpi_flavor_from_version("HYDRA build details:"), "mpich");
  EXPECT_EQ(mpi_flavor_from_version("Intel(R) MPI Library for Linux* OS, Version 2021.10"),
            "mpich");
  EXPECT_EQ(mpi_flavor_from_version("mpiexec version 1.2.12 (PALS)"), "pals");
  EXPECT_EQ(mpi_flavor_from_version("unknown"), "");
}

TEST(LaunchCli, DryRunPrintsTheCommand) {
  TempDir dir;
  write_file(dir / "hosts", "h1 slots=2\nh2 slots=2\n");
  write_file(dir / "x.toml", "[dist]\ntensor_parallel = 2\n");
  const std::string config = (dir / "x.toml").string();
  const std::vector<std::string> launch = {"launch",
                                           "--dry-run",
                                           "--hostfile",
                                           (dir / "hosts").string(),
                                           "--mpi",
                                           "mpich",
                                           "--cores-per-node",
                                           "16",
                                           "--",
                                           "borealis",
                                           "train",
                                           config};
  const auto r = test::run_borealis(launch);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "launch: hostfile (h1,h2), 4 ranks on 2 nodes, 2 per node, 8 threads per rank "
            "(16 cores per node), mpich\n"
            "mpiexec -n 4 -ppn 2 -f " +
                (dir / "hosts").string() +
                " -bind-to core:8 -genv OMP_NUM_THREADS 8 borealis train " + config +
                "\nlayout: tensor parallel 2 x data parallel 2 x pipeline parallel 1 on 2 nodes "
                "of 2 ranks; each tensor group within one node\n");
  // A layout the ranks cannot take stops the launch before any rank starts.
  std::vector<std::string> bad = launch;
  bad.insert(bad.end(), {"--set", "dist.pipeline_parallel=3"});
  const auto stopped = test::run_borealis(bad);
  EXPECT_NE(stopped.exit_code, 0);
  EXPECT_NE(stopped.err.find("= 2 x 3 does not divide the 4 ranks of the launch"),
            std::string::npos)
      << stopped.err;
  const auto usage = test::run_borealis({"launch", "--dry-run"});
  EXPECT_EQ(usage.exit_code, 2);
}

TEST(DoctorDistCli, OneRankWithoutLauncher) {
  const auto r = test::run_borealis({"doctor", "--dist"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("dist: self backend, 1 rank(s), ordered reductions"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("rank 0    host "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("slowest rank: 0 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("one rank, no bandwidth to measure"), std::string::npos) << r.out;
  const auto bad = test::run_borealis({"doctor", "--dist", "--dist-min-size", "128M"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.err, "error: need 0 < --dist-min-size <= --dist-max-size (--dist-min-size)\n");
}

// The model-parallel layout of a training launch: errors before any rank
// starts, and a warning when tensor groups would span nodes.
TEST(Launcher, TrainLayoutIsCheckedAgainstTheRanks) {
  LaunchPlan plan;
  plan.ranks = 16;
  plan.nodes = 2;
  plan.ppn = 8;
  EXPECT_EQ(describe_launch_layout(plan, 4, 2, "x"),
            "layout: tensor parallel 4 x data parallel 2 x pipeline parallel 2 on 2 nodes of 8 "
            "ranks; each tensor group within one node; each pipeline stage on 1 node(s) of its "
            "own\n");
  try {
    describe_launch_layout(plan, 3, 2, "run.toml:7");
    FAIL() << "3 x 2 does not divide 16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("= 3 x 2 does not divide the 16 ranks"), std::string::npos)
        << e.what();
    EXPECT_EQ(e.where(), "run.toml:7");
  }
  plan.ranks = 12;
  plan.ppn = 6;
  const std::string spans = describe_launch_layout(plan, 4, 1, "x");
  EXPECT_NE(spans.find("warning: --ppn 6 is not a multiple of dist.tensor_parallel = 4"),
            std::string::npos)
      << spans;
  EXPECT_NE(spans.find("use --ppn 8 or 4"), std::string::npos) << spans;
  // One node: every group is within it.
  plan.nodes = 1;
  plan.ppn = 12;
  EXPECT_EQ(describe_launch_layout(plan, 2, 3, "x").find("warning"), std::string::npos);
}

TEST(Launcher, FindsTheTrainCommandAndItsOverrides) {
  const auto t = find_train_command({"/opt/bin/borealis", "train", "--set", "dist.zero=1",
                                     "dist.tensor_parallel=2", "--steps", "5", "run.toml",
                                     "--set=dist.pipeline_parallel=2"});
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->config, "run.toml");
  EXPECT_EQ(t->overrides, (std::vector<std::string>{"dist.zero=1", "dist.tensor_parallel=2",
                                                    "dist.pipeline_parallel=2"}));
  EXPECT_FALSE(find_train_command({"borealis", "eval", "run.toml"}).has_value());
  EXPECT_FALSE(find_train_command({"borealis", "train"}).has_value());
  EXPECT_FALSE(find_train_command({"env", "X=1", "./a.out", "train", "x.toml"}).has_value());
}

}  // namespace
}  // namespace borealis
