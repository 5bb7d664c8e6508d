#include "patching/cli/args.h"

#include <cstdlib>

#include "runtime/closest_name.h"
#include "runtime/error.h"

namespace phi3 {

Args::Args(int argc, char** argv, int first, const std::set<std::string>& options, const std::set<std::string>& flags) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" && flags.count("help")) {
      flags_set_.insert("help");
    } else if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string name = a.substr(2), value;
      bool has_eq = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_eq = true;
      }
      if (flags.count(name)) {
        if (has_eq) throw Error("option --" + name + " takes no value");
        flags_set_.insert(name);
      } else if (options.count(name)) {
        if (!has_eq) {
          if (i + 1 >= argc) throw Error("option --" + name + " needs a value");
          value = argv[++i];
        }
        vals_[name] = value;
      } else {
        std::vector<std::string> known(options.begin(), options.end());
        known.insert(known.end(), flags.begin(), flags.end());
        throw Error("unknown option '--" + name + "'" + did_you_mean(name, known, "--") + " (see --help)");
      }
    } else {
      pos_.push_back(a);
    }
  }
}

bool Args::has(const std::string& n) const { return flags_set_.count(n) || vals_.count(n); }

std::string Args::get(const std::string& n, const std::string& def) const {
  auto it = vals_.find(n);
  return it == vals_.end() ? def : it->second;
}

int Args::get_int(const std::string& n, int def) const {
  auto it = vals_.find(n);
  if (it == vals_.end()) return def;
  char* end = nullptr;
  long v = std::strtol(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0' || v < 0 || v > 1000000000)
    throw Error("option --" + n + ": expected a non-negative integer, got '" + it->second + "'");
  return static_cast<int>(v);
}

double Args::get_double(const std::string& n, double def) const {
  auto it = vals_.find(n);
  if (it == vals_.end()) return def;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0' || !(v >= 0)) throw Error("option --" + n + ": expected a non-negative number, got '" + it->second + "'");
  return v;
}

}  // namespace phi3
