#include "dist/mpi_probe.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace borealis::mpi_detail {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kProbeTag = 1;
constexpr int kReplyTag = 2;

std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  return std::string(text, static_cast<std::size_t>(length));
}

}  // namespace

void check(int rc, const char* call) {
  if (rc != MPI_SUCCESS) throw Error(fmt::format("{} failed: {}", call, mpi_error_text(rc)), call);
}

void MpiProbes::open(MPI_Comm world) {
  check(MPI_Comm_dup(world, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  post_receive();
}

void MpiProbes::close() {
  if (comm_ == MPI_COMM_NULL) return;
  if (probe_request_ != MPI_REQUEST_NULL) {
    MPI_Cancel(&probe_request_);
    MPI_Wait(&probe_request_, MPI_STATUS_IGNORE);
  }
  for (auto& [request, buffer] : replies_) MPI_Wait(&request, MPI_STATUS_IGNORE);
  replies_.clear();
  MPI_Comm_free(&comm_);
}

void MpiProbes::post_receive() {
  check(
      MPI_Irecv(&probe_buffer_, 1, MPI_INT64_T, MPI_ANY_SOURCE, kProbeTag, comm_, &probe_request_),
      "MPI_Irecv");
}

void MpiProbes::serve(std::uint64_t started, std::uint64_t waiting) {
  for (;;) {
    int flag = 0;
    MPI_Status status;
    check(MPI_Test(&probe_request_, &flag, &status), "MPI_Test");
    if (!flag) break;
    auto answer = std::make_unique<std::array<std::int64_t, 2>>(std::array<std::int64_t, 2>{
        static_cast<std::int64_t>(started), static_cast<std::int64_t>(waiting)});
    MPI_Request send = MPI_REQUEST_NULL;
    check(MPI_Isend(answer->data(), 2, MPI_INT64_T, status.MPI_SOURCE, kReplyTag, comm_, &send),
          "MPI_Isend");
    replies_.emplace_back(send, std::move(answer));
    post_receive();
  }
  std::erase_if(replies_, [](auto& reply) {
    int flag = 0;
    MPI_Test(&reply.first, &flag, MPI_STATUS_IGNORE);
    return flag != 0;
  });
}

ProbeAnswers MpiProbes::ask_all(std::uint64_t seq, std::uint64_t started,
                                std::chrono::milliseconds grace) {
  question_ = static_cast<std::int64_t>(seq);
  const std::int64_t question = question_;
  const auto n = static_cast<std::size_t>(size_);
  answers_.assign(n, {});
  diagnosis_.assign(2 * n, MPI_REQUEST_NULL);  // receives, then sends
  std::vector<MPI_Request>& receives = diagnosis_;
  std::vector<bool> answered(n, false);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    const auto i = static_cast<std::size_t>(r);
    MPI_Irecv(answers_[i].data(), 2, MPI_INT64_T, r, kReplyTag, comm_, &receives[i]);
    MPI_Isend(&question_, 1, MPI_INT64_T, r, kProbeTag, comm_, &diagnosis_[n + i]);
  }
  const auto deadline = Clock::now() + grace;
  int missing = size_ - 1;
  while (missing > 0 && Clock::now() < deadline) {
    serve(started, seq);
    for (int r = 0; r < size_; ++r) {
      auto& request = receives[static_cast<std::size_t>(r)];  // NULL once answered
      if (request == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
      if (flag) {
        answered[static_cast<std::size_t>(r)] = true;
        --missing;
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ProbeAnswers out;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    const auto i = static_cast<std::size_t>(r);
    if (!answered[i]) {
      out.silent.push_back(r);
    } else if (answers_[i][1] != question) {
      out.elsewhere.emplace_back(r, answers_[i][1]);
    }
  }
  return out;
}

std::chrono::milliseconds probe_grace(std::chrono::milliseconds timeout) {
  return std::clamp(timeout / 4, std::chrono::milliseconds(200), std::chrono::milliseconds(10'000));
}

void throw_time_out(const std::string& what, double waited_s, int rank,
                    const std::vector<std::string>& hosts, std::chrono::milliseconds grace,
                    const ProbeAnswers& answers) {
  const auto who = [&](int r) {
    return fmt::format("rank {} ({})", r, hosts.at(static_cast<std::size_t>(r)));
  };
  std::vector<std::string> silent;
  std::vector<std::string> elsewhere;
  for (const int r : answers.silent) silent.push_back(who(r));
  for (const auto& [r, w] : answers.elsewhere) {
    elsewhere.push_back(w == 0 ? who(r) + " is not waiting in any operation"
                               : fmt::format("{} waits in operation #{}", who(r), w));
  }
  auto list = [](const std::vector<std::string>& items) {
    std::string out;
    const std::size_t shown = std::min<std::size_t>(items.size(), 8);
    for (std::size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + items[i];
    if (items.size() > shown) out += fmt::format(" and {} more", items.size() - shown);
    return out;
  };
  std::string message = fmt::format("{} timed out after {:.1f} s on {}", what, waited_s, who(rank));
  if (!silent.empty()) {
    message += fmt::format(": no answer within {:.1f} s from {}",
                           std::chrono::duration<double>(grace).count(), list(silent));
  }
  if (!elsewhere.empty()) message += (silent.empty() ? ": " : "; ") + list(elsewhere);
  if (silent.empty() && elsewhere.empty()) {
    message += ": every rank answers and waits in this operation (slow network or MPI stall)";
  }
  spdlog::error("{}", message);
  throw CommTimeout(message, fmt::format("rank {}", rank), what, rank, answers.silent);
}

}  // namespace borealis::mpi_detail
