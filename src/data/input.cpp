#include "data/input.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>

#include "core/error.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

InputFormat format_of(const fs::path& path) {
  fs::path p = path;
  const std::string ext = lower(p.extension().string());
  if (ext == ".gz" || ext == ".zst") p = p.stem();
  const std::string inner = lower(p.extension().string());
  return inner == ".jsonl" || inner == ".json" || inner == ".ndjson" ? InputFormat::JsonLines
                                                                     : InputFormat::Text;
}

// Reads a file with read(2) in blocks.
class FileReader {
 public:
  explicit FileReader(const fs::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw_errno("cannot open input", path.string(), errno);
    ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  ~FileReader() { ::close(fd_); }
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  // Returns bytes read into buf (0 at the end).
  std::size_t read(void* buf, std::size_t n) {
    while (true) {
      const ssize_t got = ::read(fd_, buf, n);
      if (got >= 0) {
        consumed_ += static_cast<std::uint64_t>(got);
        return static_cast<std::size_t>(got);
      }
      if (errno != EINTR) throw_errno("cannot read input", path_.string(), errno);
    }
  }
  std::uint64_t consumed() const { return consumed_; }

 private:
  fs::path path_;
  int fd_ = -1;
  std::uint64_t consumed_ = 0;
};

class PlainSource final : public ByteSource {
 public:
  explicit PlainSource(const fs::path& path) : file_(path) {}
  bool read(std::string& out, std::size_t max) override {
    const std::size_t old = out.size();
    out.resize(old + max);
    const std::size_t got = file_.read(out.data() + old, max);
    out.resize(old + got);
    return got > 0;
  }
  std::uint64_t consumed() const override { return file_.consumed(); }

 private:
  FileReader file_;
};

constexpr std::size_t kInBlock = 1 << 20;

// gzip, including files of several concatenated gzip members (as pigz and
// `cat a.gz b.gz` make).
class GzipSource final : public ByteSource {
 public:
  explicit GzipSource(const fs::path& path) : path_(path), file_(path), in_(kInBlock) {
    if (inflateInit2(&z_, 15 + 32) != Z_OK)
      throw Error("cannot start gzip decompression", path.string());
  }
  ~GzipSource() override { inflateEnd(&z_); }
  GzipSource(const GzipSource&) = delete;
  GzipSource& operator=(const GzipSource&) = delete;

  bool read(std::string& out, std::size_t max) override {
    const std::size_t old = out.size();
    out.resize(old + max);
    z_.next_out = reinterpret_cast<Bytef*>(out.data() + old);
    z_.avail_out = static_cast<uInt>(max);
    while (z_.avail_out > 0) {
      if (z_.avail_in == 0) {
        z_.avail_in = static_cast<uInt>(file_.read(in_.data(), in_.size()));
        z_.next_in = in_.data();
        if (z_.avail_in == 0) {
          if (in_member_) throw Error("truncated gzip stream", path_.string());
          break;
        }
      }
      const int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        in_member_ = false;
        inflateReset(&z_);  // another member may follow
      } else if (rc == Z_OK || rc == Z_BUF_ERROR) {
        in_member_ = true;
      } else {
        throw Error(
            fmt::format("corrupt gzip stream: {}", z_.msg != nullptr ? z_.msg : "inflate failed"),
            path_.string());
      }
    }
    const std::size_t got = max - z_.avail_out;
    out.resize(old + got);
    return got > 0;
  }
  std::uint64_t consumed() const override { return file_.consumed(); }

 private:
  fs::path path_;
  FileReader file_;
  std::vector<unsigned char> in_;
  z_stream z_{};
  bool in_member_ = false;
};

class ZstdSource final : public ByteSource {
 public:
  explicit ZstdSource(const fs::path& path) : path_(path), file_(path), in_(ZSTD_DStreamInSize()) {
    ds_ = ZSTD_createDStream();
    if (ds_ == nullptr) throw std::bad_alloc();
  }
  ~ZstdSource() override { ZSTD_freeDStream(ds_); }
  ZstdSource(const ZstdSource&) = delete;
  ZstdSource& operator=(const ZstdSource&) = delete;

  bool read(std::string& out, std::size_t max) override {
    const std::size_t old = out.size();
    out.resize(old + max);
    ZSTD_outBuffer o{out.data() + old, max, 0};
    while (o.pos < o.size) {
      if (input_.pos == input_.size) {
        input_ = {in_.data(), file_.read(in_.data(), in_.size()), 0};
        if (input_.size == 0) {
          if (pending_ != 0) throw Error("truncated zstd stream", path_.string());
          break;
        }
      }
      pending_ = ZSTD_decompressStream(ds_, &o, &input_);
      if (ZSTD_isError(pending_)) {
        throw Error(fmt::format("corrupt zstd stream: {}", ZSTD_getErrorName(pending_)),
                    path_.string());
      }
    }
    out.resize(old + o.pos);
    return o.pos > 0;
  }
  std::uint64_t consumed() const override { return file_.consumed(); }

 private:
  fs::path path_;
  FileReader file_;
  std::vector<char> in_;
  ZSTD_inBuffer input_{nullptr, 0, 0};
  ZSTD_DStream* ds_ = nullptr;
  std::size_t pending_ = 0;  // 0 when a frame ended cleanly
};

}  // namespace

std::unique_ptr<ByteSource> ByteSource::open(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  if (ext == ".gz") return std::make_unique<GzipSource>(path);
  if (ext == ".zst") return std::make_unique<ZstdSource>(path);
  return std::make_unique<PlainSource>(path);
}

std::vector<InputFile> list_inputs(const std::vector<fs::path>& paths) {
  std::vector<InputFile> out;
  for (const auto& p : paths) {
    std::error_code ec;
    const auto status = fs::status(p, ec);
    if (ec || !fs::exists(status)) throw Error("input does not exist", p.string());
    if (fs::is_directory(status)) {
      std::vector<fs::path> files;
      for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->is_regular_file()) files.push_back(it->path());
      }
      if (ec) throw Error("cannot list directory: " + ec.message(), p.string());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) out.push_back({f, format_of(f), fs::file_size(f)});
    } else {
      out.push_back({p, format_of(p), fs::file_size(p)});
    }
  }
  if (out.empty()) throw Error("no input files", "--input");
  return out;
}

}  // namespace borealis
