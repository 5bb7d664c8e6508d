// GPT-2 loading and its limits, on the random reference model (data/reference/rand-gpt2-tiny):
// the hub layout (names without "transformer.", the causal-mask buffers attn.bias /
// attn.masked_bias old checkpoints carry) loads to the same logits; a position past n_positions
// is refused. (Its values against transformers: tests/cpu/test_reference.cpp.)
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "model/batch.h"
#include "model/forward.h"
#include "model/model.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "test_util.h"

namespace phi3 {
namespace {

const std::string kRef = "/data/reference/rand-gpt2-tiny/model";

TEST(Gpt2, HubLayoutWithoutPrefixAndWithMaskBuffersLoadsTheSameModel) {
  namespace fs = std::filesystem;
  const std::string src = test::source_dir() + kRef;
  const std::string dir = testing::TempDir() + "gpt2-hub-layout";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"config.json", "tokenizer.model", "added_tokens.json"})
    fs::copy_file(src + "/" + f, dir + "/" + f);
  SafeTensors st = SafeTensors::open_dir(src);
  std::vector<TensorToWrite> out;
  for (const std::string& name : st.names()) {
    ASSERT_EQ(name.rfind("transformer.", 0), 0u) << name;  // save_pretrained's layout
    const TensorInfo& t = st.get(name);
    std::vector<float> v(size_t(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = t.value(i);
    out.push_back(tensor_f32(name.substr(12), t.shape, v));
  }
  const int64_t n_pos = 64;
  for (int l = 0; l < 3; ++l) {  // the causal masks of the original checkpoints (not weights)
    out.push_back(tensor_f32("h." + std::to_string(l) + ".attn.bias", {1, 1, n_pos, n_pos},
                             std::vector<float>(size_t(n_pos * n_pos), 1.0f)));
    out.push_back(tensor_f32("h." + std::to_string(l) + ".attn.masked_bias", {}, {-1e4f}));
  }
  write_safetensors(dir + "/model.safetensors", out);

  auto be = make_cpu_backend();
  auto a = load_model(*be, src);
  auto b = load_model(*be, dir);
  const Batch batch = make_batch({{1, 5, 9, 200, 7}, {3, 4}}, a->cfg.pad_token_id);
  const auto la = last_logits(*be, *a, forward(*be, *a, batch, {}));
  const auto lb = last_logits(*be, *b, forward(*be, *b, batch, {}));
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) ASSERT_EQ(la[i], lb[i]) << i;
  fs::remove_all(dir);
}

TEST(Gpt2, PositionsPastNPositionsAreRefused) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + kRef);
  ASSERT_EQ(m->cfg.max_position_embeddings, 64);
  std::vector<int> row(65, 5);
  const Batch batch = make_batch({row}, m->cfg.pad_token_id);
  try {
    forward(*be, *m, batch, {});
    FAIL() << "65 positions accepted with n_positions 64";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_positions"), std::string::npos) << e.what();
  }
  std::vector<int> ok(64, 5);
  EXPECT_NO_THROW(forward(*be, *m, make_batch({ok}, m->cfg.pad_token_id), {}));
}

}  // namespace
}  // namespace phi3
