// Errors: library code throws phi3::Error with a message that names the culprit
// (file, tensor, field, token); the CLI catches it, prints one line and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace phi3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Thrown when a device runs out of memory; the CLI adds which option lowers the need.
class OutOfMemory : public Error {
 public:
  explicit OutOfMemory(const std::string& msg) : Error(msg) {}
};

}  // namespace phi3

#define PHI3_CHECK(cond, msg)                                   \
  do {                                                          \
    if (!(cond)) throw ::phi3::Error(std::string() + msg);      \
  } while (0)
