// The CLI's commands: name, accepted options and flags, --help text (command_specs.cpp).
#pragma once
#include <set>
#include <string>
#include <vector>

namespace phi3 {

struct CommandSpec {
  std::string name;
  std::set<std::string> options;  // take a value: --name VALUE or --name=VALUE
  std::set<std::string> flags;    // take none (every command has --help)
  const char* usage;              // what --help prints
};

const std::vector<CommandSpec>& command_specs();
const CommandSpec& command_spec(const std::string& name);  // throws listing the commands

}  // namespace phi3
