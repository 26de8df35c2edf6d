// Converter speed against a plain copy of the same file, measured in the same
// run: `borealis import hf`, `export hf` and `export gguf` on a model with
// random weights, each timed as a user runs it (a new process, the source
// file evicted from the page cache first, the output written and flushed to
// disk), next to a copy of its source file made the same way (read, write,
// fsync, rename). Prints the median of the repeats, the ratio to the copy's
// median, and each command's peak resident memory against its input file.
//
//   build/release/bench/interop_bench --model gpt2-124m --dir /tmp/interop
//
// The copy is what "at disk speed" means here: the same bytes read from a
// cold source and written durably, with nothing done to them. The source is
// evicted with posix_fadvise(POSIX_FADV_DONTNEED), which needs no privileges
// and drops clean pages; the program prints how much of it stayed cached.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "model/checkpoint_load.h"
#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace borealis;

namespace {

struct Options {
  std::string borealis = "build/release/src/borealis";
  std::string model = "gpt2-124m";
  std::string tokenizer = "data/tokenizers/gpt2.json";
  fs::path dir = "/tmp/borealis-interop-bench";
  int repeats = 3;
  bool warm = false;  // leave the sources in the page cache
};

// Drops a file's clean pages from the page cache; returns the fraction of its
// pages still cached afterwards (mincore), so that a warm figure is seen.
double evict(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open", file.string(), errno);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  struct stat st {};
  ::fstat(fd, &st);
  double cached = 0;
  if (st.st_size > 0) {
    void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      const long page = ::sysconf(_SC_PAGESIZE);
      const std::size_t pages = (static_cast<std::size_t>(st.st_size) + page - 1) / page;
      std::vector<unsigned char> in(pages);
      if (::mincore(p, static_cast<std::size_t>(st.st_size), in.data()) == 0) {
        cached = static_cast<double>(
                     std::count_if(in.begin(), in.end(), [](unsigned char c) { return c & 1; })) /
                 static_cast<double>(pages);
      }
      ::munmap(p, static_cast<std::size_t>(st.st_size));
    }
  }
  ::close(fd);
  return cached;
}

void evict_dir(const fs::path& dir, double& cached) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) cached = std::max(cached, evict(entry.path()));
  }
}

struct Timing {
  double seconds = 0;
  double peak_rss_mb = 0;
};

// A copy as a careful `cp` makes it: read and write in 1 MiB pieces, fsync,
// rename into place (as AtomicFile does for the converters' outputs).
Timing timed_copy(const fs::path& from, const fs::path& to) {
  const auto start = bench::Clock::now();
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw_errno("cannot open", from.string(), errno);
  AtomicFile out(to);
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", from.string(), errno);
    }
    if (n == 0) break;
    out.write(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(in);
  out.commit();
  return {bench::seconds_since(start), 0};
}

// Runs argv as a new process (its output to log) and times it.
Timing run(const std::vector<std::string>& argv, const fs::path& log) {
  const auto start = bench::Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("cannot fork", argv[0], errno);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    std::_Exit(127);
  }
  int status = 0;
  struct rusage usage {};
  while (::wait4(pid, &status, 0, &usage) < 0) {
    if (errno != EINTR) throw_errno("cannot wait for", argv[0], errno);
  }
  const double seconds = bench::seconds_since(start);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error("the command failed; its output is in " + log.string(), argv[0] + " " + argv[1]);
  }
  return {seconds, static_cast<double>(usage.ru_maxrss) / 1024.0};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Job {
  std::string name;
  fs::path source;  // the file whose copy is the baseline
  fs::path source_dir;
  fs::path output;  // removed before each run
  std::vector<std::string> argv;
  std::vector<double> seconds, copy_seconds, rss;
};

int run_bench(const Options& o) {
  fs::create_directories(o.dir);
  const fs::path ckpt = o.dir / "ckpt", hf = o.dir / "hf";
  const std::string bin = fs::absolute(o.borealis).string();
  if (!fs::is_regular_file(bin)) throw Error("no borealis binary (build it first)", bin);
  {
    const ModelConfig c = model_preset(o.model);
    const Tokenizer tok = Tokenizer::load(o.tokenizer);
    const ParamLayout layout(c);
    std::vector<float> params(static_cast<std::size_t>(layout.total()));
    init_params(c, layout, params.data(), 1234);
    fs::create_directories(ckpt);
    write_file_atomic(ckpt / "tokenizer.json", hf_tokenizer_json(tok));
    save_safetensors(ckpt / "model.safetensors", layout, params.data(),
                     {{kModelConfigKey, model_config_to_json(c)}});
  }
  fs::remove_all(hf);
  run({bin, "export", "hf", ckpt.string(), hf.string()}, o.dir / "setup.log");

  std::vector<Job> jobs = {
      {"import hf (F32)",
       hf / "model.safetensors",
       hf,
       o.dir / "imported",
       {bin, "import", "hf", hf.string(), (o.dir / "imported").string()},
       {},
       {},
       {}},
      {"export hf (F32)",
       ckpt / "model.safetensors",
       ckpt,
       o.dir / "exported",
       {bin, "export", "hf", ckpt.string(), (o.dir / "exported").string()},
       {},
       {},
       {}},
      {"export hf --dtype bfloat16",
       ckpt / "model.safetensors",
       ckpt,
       o.dir / "exported-bf16",
       {bin, "export", "hf", ckpt.string(), (o.dir / "exported-bf16").string(), "--dtype",
        "bfloat16"},
       {},
       {},
       {}},
      {"export gguf (F32)",
       ckpt / "model.safetensors",
       ckpt,
       o.dir / "model.gguf",
       {bin, "export", "gguf", ckpt.string(), (o.dir / "model.gguf").string()},
       {},
       {},
       {}},
      {"export gguf --type q8_0",
       ckpt / "model.safetensors",
       ckpt,
       o.dir / "model-q8.gguf",
       {bin, "export", "gguf", ckpt.string(), (o.dir / "model-q8.gguf").string(), "--type", "q8_0"},
       {},
       {},
       {}},
  };
  const fs::path copy = o.dir / "copy";
  double cached = 0;
  for (int r = 0; r < o.repeats; ++r) {
    for (Job& job : jobs) {
      // The copy and the command take turns, each from a cold source.
      if (!o.warm) evict_dir(job.source_dir, cached);
      job.copy_seconds.push_back(timed_copy(job.source, copy).seconds);
      fs::remove_all(copy);
      fs::remove_all(job.output);
      if (!o.warm) evict_dir(job.source_dir, cached);
      const Timing t = run(job.argv, o.dir / "command.log");
      job.seconds.push_back(t.seconds);
      job.rss.push_back(t.peak_rss_mb);
    }
  }

  if (o.warm) {
    std::printf("%s, %d repeats, medians; --warm: the sources left in the page cache\n",
                o.model.c_str(), o.repeats);
  } else {
    std::printf(
        "%s, %d repeats, medians; source evicted from the page cache before each run "
        "(at most %.0f%% of a source file stayed cached)\n",
        o.model.c_str(), o.repeats, cached * 100);
  }
  std::printf("%-28s %9s %9s %8s %10s %12s %14s\n", "command", "seconds", "copy s", "ratio",
              "input MB", "peak RSS MB", "RSS / input");
  for (const Job& job : jobs) {
    const double in_mb = static_cast<double>(fs::file_size(job.source)) / 1e6;
    const double s = median(job.seconds), c = median(job.copy_seconds);
    const double rss = *std::max_element(job.rss.begin(), job.rss.end());
    std::printf("%-28s %9.3f %9.3f %7.2fx %10.1f %12.1f %13.2fx\n", job.name.c_str(), s, c, s / c,
                in_mb, rss, rss / in_mb);
  }
  std::printf(
      "copy = the command's input file copied (read, write, fsync, rename) in the same "
      "turn; ratio = command / copy; peak RSS is the largest of the repeats\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return bench::main_with_errors([&] {
    Options o;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto value = [&]() -> const char* {
        if (i + 1 >= argc) throw Error("needs a value", a);
        return argv[++i];
      };
      if (a == "--borealis") {
        o.borealis = value();
      } else if (a == "--model") {
        o.model = value();
      } else if (a == "--tokenizer") {
        o.tokenizer = value();
      } else if (a == "--dir") {
        o.dir = value();
      } else if (a == "--repeats") {
        o.repeats = bench::parse_positive_int(a, value());
      } else if (a == "--warm") {
        o.warm = true;
      } else if (a == "-h" || a == "--help") {
        std::printf(
            "usage: interop_bench [--borealis PATH] [--model PRESET] [--tokenizer JSON] [--dir DIR]"
            " [--repeats N] [--warm]\n"
            "Times borealis import hf / export hf / export gguf against a copy of the same file\n"
            "(defaults: build/release/src/borealis, gpt2-124m, data/tokenizers/gpt2.json,\n"
            "/tmp/borealis-interop-bench, 3 repeats). DIR takes about 4 times the model's size.\n"
            "Sources are evicted from the page cache before each run (cold), unless --warm; in\n"
            "tmpfs (/dev/shm), which cannot evict, use --warm to time the work without the "
            "disk.\n");
        return 0;
      } else {
        throw Error("unknown option (see --help)", a);
      }
    }
    return run_bench(o);
  });
}
