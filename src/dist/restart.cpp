#include "dist/restart.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "dist/launcher.h"

namespace borealis {

namespace {

std::atomic<pid_t> g_child{0};
std::atomic<int> g_signal{0};

extern "C" void on_launcher_signal(int sig) {
  g_signal = sig;
  const pid_t child = g_child;
  if (sig == SIGTERM && child > 0) ::kill(child, SIGTERM);
}

std::string exit_text(int wait_status) {
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = strsignal(sig);
    return fmt::format("the job was killed by signal {} ({})", sig, name ? name : "?");
  }
  return fmt::format("the job exited with status {}", WEXITSTATUS(wait_status));
}

// The first line of a message: time-out messages go on for lines.
std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

// Starts argv as a child with `status_file` in its environment.
pid_t spawn(const std::vector<std::string>& argv, const std::filesystem::path& status_file) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("cannot start the job", argv.front(), errno);
  if (pid == 0) {
    ::setenv(kLaunchStatusEnv, status_file.c_str(), 1);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "error: cannot run %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("cannot wait for the job", std::to_string(pid), errno);
  }
  return status;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void report_to_launcher(const std::string& json_line) {
  const char* path = std::getenv(kLaunchStatusEnv);
  if (path == nullptr || *path == '\0') return;
  const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string line = json_line + "\n";
  [[maybe_unused]] const ssize_t n = ::write(fd, line.data(), line.size());
  ::close(fd);
}

AttemptFailure describe_failure(int wait_status, const std::string& status_text,
                                const std::function<std::int64_t(const std::string&)>& last_step) {
  AttemptFailure f;
  f.exit_code = WIFSIGNALED(wait_status)
                    ? 128 + WTERMSIG(wait_status)
                    : (WEXITSTATUS(wait_status) != 0 ? WEXITSTATUS(wait_status) : 1);
  std::string run_dir;
  std::optional<nlohmann::json> root_cause, timeout;
  std::istringstream lines(status_text);
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json e = nlohmann::json::parse(line, nullptr, false);
    if (!e.is_object()) continue;  // a line cut short by a killed rank
    const std::string event = e.value("event", "");
    if (event == "start") run_dir = e.value("run_dir", "");
    if (event != "error") continue;
    auto& slot = e.value("timeout", false) ? timeout : root_cause;
    if (!slot || e.value("rank", 0) < slot->value("rank", 0)) slot = e;
  }
  const std::optional<nlohmann::json>& error = root_cause ? root_cause : timeout;
  std::int64_t done = -1;
  if (error) {
    f.cause = fmt::format("rank {} ({}): {}", error->value("rank", 0), error->value("host", "?"),
                          first_line(error->value("error", "")));
    done = error->value("step", std::int64_t{-1});
  } else {
    f.cause = exit_text(wait_status);
  }
  if (done < 0 && !run_dir.empty() && last_step) done = last_step(run_dir);
  if (done >= 0) f.step = done + 1;
  return f;
}

bool same_failure(const AttemptFailure& a, const AttemptFailure& b) {
  return a.cause == b.cause && a.step == b.step;
}

std::vector<std::string> restart_command(const std::vector<std::string>& argv) {
  std::vector<std::string> out = argv;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] == "--resume" && i + 1 < out.size()) {
      out[++i] = "auto";
    } else if (out[i].starts_with("--resume=")) {
      out[i] = "--resume=auto";
    }
  }
  return out;
}

int run_with_restarts(const std::vector<std::string>& argv, const RestartOptions& o) {
  struct sigaction sa {};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  std::optional<AttemptFailure> previous;
  int code = 0;
  std::vector<std::string> command = argv;
  for (int attempt = 0;; ++attempt) {
    {
      std::ofstream truncate(o.status_file, std::ios::trunc);
      if (!truncate) {
        throw Error("cannot write the launcher's status file", o.status_file.string());
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = spawn(command, o.status_file);
    g_child = pid;
    const int status = wait_child(pid);
    g_child = 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      if (attempt > 0) fmt::print(stderr, "launch: the job finished after {} restarts\n", attempt);
      code = 0;
      break;
    }
    const AttemptFailure f = describe_failure(status, read_text(o.status_file), o.last_step);
    code = f.exit_code;
    const double ran_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string at = f.step >= 0 ? fmt::format(" in step {}", f.step) : std::string();
    fmt::print(stderr, "launch: attempt {} failed after {:.1f} s{}: {}\n", attempt + 1, ran_s, at,
               f.cause);
    if (g_signal != 0) {
      fmt::print(stderr, "launch: stopped by signal {}; not restarting\n", g_signal.load());
      break;
    }
    if (previous && same_failure(*previous, f)) {
      fmt::print(stderr,
                 "launch: the same failure came at the same step twice in a row; it is not a "
                 "passing fault, so the job is not restarted again\n");
      break;
    }
    if (attempt >= o.max_restarts) {
      fmt::print(stderr, "launch: giving up after {} restart{}: {}\n", o.max_restarts,
                 o.max_restarts == 1 ? "" : "s", f.cause);
      break;
    }
    previous = f;
    command = restart_command(argv);
    fmt::print(stderr, "launch: restart {} of {} in {} s, resuming from the last checkpoint\n",
               attempt + 1, o.max_restarts, o.delay_s);
    std::fflush(stderr);
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.delay_s);
    while (g_signal == 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (g_signal != 0) {
      fmt::print(stderr, "launch: stopped by signal {}; not restarting\n", g_signal.load());
      break;
    }
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  std::error_code ec;
  std::filesystem::remove(o.status_file, ec);
  return code;
}

std::string restart_loop_script(const std::vector<std::string>& argv, const RestartOptions& o) {
  return fmt::format(
      "# the same with restarts, for a batch script:\n"
      "cmd=({})\n"
      "for attempt in $(seq 0 {}); do\n"
      "  \"${{cmd[@]}}\" && break\n"
      "  [ \"$attempt\" -lt {} ] || exit 1\n"
      "  echo \"restart $((attempt + 1)) of {}\" >&2; sleep {}\n"
      "  cmd=({})\n"
      "done\n",
      shell_join(argv), o.max_restarts, o.max_restarts, o.max_restarts, o.delay_s,
      shell_join(restart_command(argv)));
}

}  // namespace borealis
