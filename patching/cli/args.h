// Minimal command-line parsing: `--name value`, `--flag`, positional arguments; unknown
// options are errors naming the option and the closest one the command accepts.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

namespace phi3 {

class Args {
 public:
  // `flags` take no value; `options` take one.
  Args(int argc, char** argv, int first, const std::set<std::string>& options, const std::set<std::string>& flags);
  bool has(const std::string& name) const;
  std::string get(const std::string& name, const std::string& def) const;
  int get_int(const std::string& name, int def) const;
  double get_double(const std::string& name, double def) const;
  const std::vector<std::string>& positional() const { return pos_; }
  void set(const std::string& name, const std::string& value) { vals_[name] = value; }  // --model resolved

 private:
  std::map<std::string, std::string> vals_;
  std::set<std::string> flags_set_;
  std::vector<std::string> pos_;
};

}  // namespace phi3
