// Gemma 3 on the CPU backend beyond its transformers reference (rand-gemma3-dualrope, checked by
// test_reference / test_verify_all_references): the Gemma3ForConditionalGeneration checkpoint
// layouts (config under text_config; weights under language_model.model.* (older hub) or
// model.language_model.* (transformers 5), a vision tower and projector beside them) load the
// same decoder, bit for bit, as the Gemma3ForCausalLM files they are rewritten from; and
// circuits are refused for the post-norm model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/backward.h"
#include "model/forward.h"
#include "model/model.h"
#include "patching/circuit.h"
#include "runtime/file_util.h"
#include "runtime/safetensors.h"
#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string ref_model() { return test::source_dir() + "/data/reference/rand-gemma3-dualrope/model"; }

// The reference model rewritten as a Gemma3ForConditionalGeneration checkpoint in `dir`: its
// config.json under text_config, its tensors renamed from model.* to `body`*, plus two vision
// tensors the loader must skip.
void write_multimodal(const std::string& dir, const std::string& body) {
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.model", "added_tokens.json"})
    fs::copy_file(ref_model() + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
  json text = json::parse(test::slurp(ref_model() + "/config.json"));
  text.erase("architectures");
  const bool tied = text.value("tie_word_embeddings", true);
  json mm = {{"architectures", {"Gemma3ForConditionalGeneration"}},
             {"model_type", "gemma3"},
             {"tie_word_embeddings", tied},
             {"text_config", text},
             {"vision_config", {{"model_type", "siglip_vision_model"}, {"hidden_size", 8}}}};
  text.erase("tie_word_embeddings");  // from the top level, as the hub files have it
  mm["text_config"] = text;
  std::ofstream(dir + "/config.json") << mm.dump(1);
  const SafeTensors st = SafeTensors::open_dir(ref_model());
  std::vector<TensorToWrite> out;
  for (const auto& name : st.names()) {
    const TensorInfo& t = st.get(name);
    TensorToWrite w;
    w.name = name.compare(0, 6, "model.") == 0 ? body + name.substr(6) : name;
    w.dtype = t.dtype;
    w.shape = t.shape;
    w.bytes.assign(t.data, t.data + t.nbytes);
    out.push_back(std::move(w));
  }
  out.push_back(tensor_f32("vision_tower.vision_model.post_layernorm.weight", {8}, std::vector<float>(8, 1.0f)));
  out.push_back(tensor_f32("multi_modal_projector.mm_input_projection_weight", {8, 48}, std::vector<float>(8 * 48, 0.5f)));
  write_safetensors(dir + "/model.safetensors", out);
}

std::vector<float> logits_of(Backend& be, const Model& m) {
  const Batch b = make_batch({{1, 17, 300, 42, 9, 512, 77, 3, 250, 1000, 11, 64}, {1, 5, 6, 7}}, m.cfg.pad_token_id);
  const ForwardState s = forward(be, m, b);
  return s.logits.download();
}

TEST(Gemma3, MultimodalLayoutsLoadTheSameDecoder) {
  auto be = make_cpu_backend();
  auto ref = load_model(*be, ref_model());
  ASSERT_EQ(ref->cfg.architecture, "Gemma3ForCausalLM");
  const std::vector<float> want = logits_of(*be, *ref);
  for (const std::string body : {"language_model.model.", "model.language_model."}) {
    const std::string dir = test::temp_dir("gemma3_mm_" + std::to_string(body.size()) + body.substr(0, 5));
    write_multimodal(dir, body);
    testing::internal::CaptureStderr();
    auto m = load_model(*be, dir);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(m->cfg.architecture, "Gemma3ForConditionalGeneration") << body;
    EXPECT_EQ(m->cfg.family, "gemma3");
    EXPECT_NE(err.find("2 tensors of the vision tower and the multimodal projector are ignored"), std::string::npos)
        << err;
    EXPECT_EQ(logits_of(*be, *m), want) << body;  // the same weights: the same bits
  }
}

// A checkpointed forward pass recomputes each layer in the backward with that layer's rotary
// table (local or global): the gradients equal the kept pass's, bit for bit.
TEST(Gemma3, CheckpointedBackwardUsesEachLayersRotary) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, ref_model());
  ASSERT_TRUE(m->cfg.local_rope(0));
  ASSERT_FALSE(m->cfg.local_rope(2));
  const Batch b = make_batch({{1, 17, 300, 42, 9, 512, 77, 3, 250, 1000, 11, 64}, {1, 5, 6, 7}}, m->cfg.pad_token_id);
  const std::vector<int32_t> answer = {281, 279}, other = {279, 281};
  ForwardOptions ck;
  ck.checkpoint = true;
  const ForwardState kept = forward(*be, *m, b), checkpointed = forward(*be, *m, b, ck);
  const Gradients gk = backward(*be, *m, kept, answer, other, 1.0f);
  const Gradients gc = backward(*be, *m, checkpointed, answer, other, 1.0f);
  for (int l = 0; l < m->cfg.num_hidden_layers; ++l) {
    EXPECT_EQ(gc.layers[l].resid_pre.download(), gk.layers[l].resid_pre.download()) << l;
    EXPECT_EQ(gc.layers[l].qkv.download(), gk.layers[l].qkv.download()) << l;
  }
  // and a nonzero gradient reaches the first layer's q/k (through both tables)
  double norm = 0;
  for (float x : gk.layers[0].qkv.download()) norm += double(x) * x;
  EXPECT_GT(norm, 0.0);
}

TEST(Gemma3, CircuitsRefusedForPostNorms) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, ref_model());
  EXPECT_FALSE(circuits_supported(m->cfg));
  const std::string e = test::error_of([&] { check_circuit_support(m->cfg); });
  EXPECT_NE(e.find("Gemma3ForCausalLM"), std::string::npos) << e;
  EXPECT_NE(e.find("post-norms"), std::string::npos) << e;
}

}  // namespace
}  // namespace phi3
