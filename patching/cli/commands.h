// Subcommands implemented in their own files.
#pragma once
#include <string>

namespace phi3 {
int cmd_verify(int argc, char** argv, int first);       // verify_cmd.cpp
int cmd_bench(int argc, char** argv, int first);        // bench_cmd.cpp
class Args;
class Comm;
int cmd_bench_scaling(const Args& a, Comm& comm);       // bench_scaling_cmd.cpp (under mpirun)
int cmd_make_random(int argc, char** argv, int first);  // make_random_cmd.cpp
std::string default_path(const std::string& rel);       // main.cpp: repo-relative default
}  // namespace phi3
