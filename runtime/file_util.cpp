// File helpers: whole-file reads that name what was being read, atomic writes through a
// temp file in the same directory (path.tmp.<pid>) and a rename.
#include "runtime/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

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

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error("cannot write '" + path + "': cannot create '" + tmp + "': " + std::strerror(errno));
  size_t written = content.empty() ? 0 : std::fwrite(content.data(), 1, content.size(), f);
  int write_errno = errno;
  bool ok = written == content.size();
  if (std::fclose(f) != 0 && ok) {
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
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b[0] == '/')) return b;
  if (b.empty()) return a;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

}  // namespace phi3
