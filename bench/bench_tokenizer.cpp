// Tokenizer throughput (CPU, one thread): byte-level BPE in the Phi-4, Phi-4-mini and GPT-2
// layouts (tests/data/bpe) and SentencePiece (the embedded model's), on the 2,400-string test
// corpus joined into one text (mixed scripts, numbers, white space), and on English prose
// (the temporal dataset's questions). "cold": a freshly loaded tokenizer each time (its load
// not timed; no word cache);
// "warm": the word cache filled by an earlier pass, as in a sweep over many prompts.
//   ./build/bench_tokenizer [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <nlohmann/json.hpp>
#include <string>

#include "runtime/file_util.h"
#include "runtime/tokenizer.h"

namespace {

using phi3::Tokenizer;

std::string src(const std::string& rel) { return std::string(PHI3_SOURCE_DIR) + "/" + rel; }

const std::string& corpus_text() {
  static const std::string text = [] {
    const auto j = nlohmann::json::parse(phi3::read_text_file(src("tests/data/bpe/corpus.json"), "corpus"));
    std::string t;
    for (const auto& s : j["texts"]) t += s.get<std::string>() + "\n";
    return t;
  }();
  return text;
}

const std::string& prose_text() {
  static const std::string text = [] {
    const auto j = nlohmann::json::parse(phi3::read_text_file(src("data/raw/temporal_scope_caa.json"), "dataset"));
    std::string t;
    for (const auto& item : j) t += item["question"].get<std::string>() + "\n";
    return t;
  }();
  return text;
}

Tokenizer load(const std::string& which) {
  return which == "sentencepiece" ? Tokenizer::load_dir(src("data/models/tiny-temporal-phi3"))
                                  : Tokenizer::load_dir(src("tests/data/bpe/" + which));
}

void run(benchmark::State& state, const std::string& which, const std::string& text, bool warm) {
  Tokenizer warm_tok = load(which);
  if (warm) warm_tok.encode(text, false);
  size_t tokens = 0;
  for (auto _ : state) {
    if (warm) {
      tokens = warm_tok.encode(text, false).size();
    } else {
      state.PauseTiming();  // loading (JSON, regex compilation) is not timed
      Tokenizer t = load(which);
      state.ResumeTiming();
      tokens = t.encode(text, false).size();
    }
    benchmark::DoNotOptimize(tokens);
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.counters["tokens"] = double(tokens);
  state.counters["bytes"] = double(text.size());
}

void register_all() {
  for (const std::string which : {"phi-4", "phi-4-mini", "gpt2", "sentencepiece"}) {
    for (const bool warm : {false, true}) {
      const std::string tag = std::string(warm ? "warm" : "cold");
      benchmark::RegisterBenchmark(("encode/corpus/" + which + "/" + tag).c_str(),
                                   [=](benchmark::State& s) { run(s, which, corpus_text(), warm); })
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("encode/prose/" + which + "/" + tag).c_str(),
                                   [=](benchmark::State& s) { run(s, which, prose_text(), warm); })
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
