// Subcommands implemented in their own files.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace phi3 {
class Args;
// Each gets its arguments parsed against its command_specs.cpp entry (--help handled there).
int cmd_verify(const Args& a);                          // verify_cmd.cpp
int cmd_circuit(const Args& a);                         // circuit_cmd.cpp
int cmd_bench(const Args& a);                           // bench_cmd.cpp
class Comm;
int cmd_bench_scaling(const Args& a, Comm& comm);       // bench_scaling_cmd.cpp (under mpirun)
int cmd_make_random(const Args& a);                     // make_random_cmd.cpp
// config.json of a published model shape (model_shapes.cpp): like_shapes() lists them.
nlohmann::json config_like(const std::string& like, int layers_override = 0);
std::string like_shapes();
std::vector<std::string> like_shape_names();
int cmd_bench_predict(const Args& a);                   // bench_predict_cmd.cpp (bench --predict)
std::string default_path(const std::string& rel);       // main.cpp: repo-relative default
class Tokenizer;
// Whether prompts start with BOS (main.cpp): --bos (the tokenizer's BOS token, as TransformerLens
// prepends one), --no-bos, else where the tokenizer asks for one. check_bos_flags refuses both
// flags at once, before any loading.
void check_bos_flags(const Args& a);
void check_direction(const std::string& dir);  // denoise | noise, else an error with the closest
bool bos_option(const Args& a, const Tokenizer& tok);
// main.cpp: the log line of the checks made before the weights load ("checked 2 pairs (longest
// prompt 29 tokens) against config.json and the tokenizer in 0.01 s"), timed from t0.
std::string checked_before_weights(size_t pairs, int longest, double t0_seconds);
double now_seconds();  // steady clock, for checked_before_weights
}  // namespace phi3
