// File helpers: whole-file reads with clear errors, and atomic writes (temp file in the
// same directory, fsync, rename, fsync of the directory) so a failed or interrupted run, or a
// crashed node, never leaves a partial file.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

std::string read_text_file(const std::string& path, const std::string& what);  // throws naming `what` and path
void write_file_atomic(const std::string& path, const std::string& content);   // throws naming path
std::string temp_path_for(const std::string& path);  // write_file_atomic's temp file: path.tmp.<pid>
// Temp files a killed write_file_atomic left behind (`<name>.tmp.<digits>`) directly in `dir`,
// sorted; none when `dir` does not exist.
std::vector<std::string> stale_temp_files(const std::string& dir);
bool is_stale_temp_name(const std::string& file_name);
void remove_files(const std::vector<std::string>& paths);  // throws naming the first it cannot remove
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p; throws if it cannot
std::string path_join(const std::string& a, const std::string& b);

}  // namespace phi3
