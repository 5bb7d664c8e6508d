// File helpers: whole-file reads with clear errors, and atomic writes (temp file in the
// same directory, then rename) so a failed or interrupted run never leaves a partial file.
#pragma once
#include <string>

namespace phi3 {

std::string read_text_file(const std::string& path, const std::string& what);  // throws naming `what` and path
void write_file_atomic(const std::string& path, const std::string& content);   // throws naming path
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p; throws if it cannot
std::string path_join(const std::string& a, const std::string& b);

}  // namespace phi3
