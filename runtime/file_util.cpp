// File helpers: whole-file reads that name what was being read, atomic and durable writes
// through a temp file in the same directory (path.tmp.<pid>), fsync and a rename.
#include "runtime/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "runtime/error.h"

namespace phi3 {

std::string read_text_file(const std::string& path, const std::string& what) {
  if (dir_exists(path)) throw Error("cannot read " + what + " '" + path + "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + what + " '" + path + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + what + " '" + path + "': read error");
  return ss.str();
}

namespace {

// fsync of a directory, so a rename or a new entry in it survives a crash of the node.
bool sync_dir(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0 || errno == EINVAL;  // some file systems cannot sync a directory
  ::close(fd);
  return ok;
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Test hook (not for users): PHI3_TEST_PAUSE_IN_WRITE=<name> makes the write of a file whose
// name is <name> stop for a minute after half its bytes, so a test can kill the process
// inside the write every time.
bool pause_inside_write(const std::string& path) {
  const char* name = std::getenv("PHI3_TEST_PAUSE_IN_WRITE");
  if (!name || !*name) return false;
  const auto slash = path.find_last_of('/');
  return path.substr(slash == std::string::npos ? 0 : slash + 1) == name;
}

}  // namespace

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

// The data reaches the disk before the rename (fsync of the temp file) and the rename reaches
// it after (fsync of the directory): after a crash of the process or of the node, `path` is
// either its old content or the whole new one.
void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = temp_path_for(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot write '" + path + "': cannot create '" + tmp + "': " + std::strerror(errno));
  bool ok;
  if (pause_inside_write(path)) {
    const size_t half = content.size() / 2;
    ok = write_all(fd, content.data(), half) && ::fsync(fd) == 0;
    if (ok) std::this_thread::sleep_for(std::chrono::seconds(60));
    ok = ok && write_all(fd, content.data() + half, content.size() - half);
  } else {
    ok = write_all(fd, content.data(), content.size());
  }
  ok = ok && ::fsync(fd) == 0;
  int write_errno = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    write_errno = errno;
  }
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    write_errno = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error("cannot write '" + path + "': " + std::strerror(write_errno));
  }
  if (!sync_dir(parent_dir(path))) throw Error("cannot write '" + path + "': cannot sync its directory: " + std::strerror(errno));
}

bool is_stale_temp_name(const std::string& name) {
  const auto at = name.rfind(".tmp.");
  if (at == std::string::npos || at == 0 || at + 5 >= name.size()) return false;
  return name.find_first_not_of("0123456789", at + 5) == std::string::npos;
}

std::vector<std::string> stale_temp_files(const std::string& dir) {
  std::vector<std::string> out;
  if (!dir_exists(dir)) return out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file(ec) && is_stale_temp_name(e.path().filename().string())) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

void remove_files(const std::vector<std::string>& paths) {
  for (const auto& p : paths)
    if (std::remove(p.c_str()) != 0 && errno != ENOENT)
      throw Error("cannot remove '" + p + "': " + std::strerror(errno));
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
  if (path.empty() || dir_exists(path)) return;
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !dir_exists(path))
    throw Error("cannot create directory '" + path + "': " + (ec ? ec.message() : "a file is in the way"));
  sync_dir(parent_dir(path));  // the new entry survives a crash of the node
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b[0] == '/')) return b;
  if (b.empty()) return a;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

}  // namespace phi3
