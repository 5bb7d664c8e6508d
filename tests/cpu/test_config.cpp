// config.json parsing (Phi3ForCausalLM): the real Phi-3-mini config, variants written inline
// (GQA, partial rotary, LongRoPE, sliding window, tied embeddings, transformers-5
// "rope_parameters"), malformed configs with the messages they give, and the rotary
// frequencies against hand-computed and torch-computed numbers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "model/arch/config_json.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

// A small valid Phi-3 config: D=64, 4 heads of 16, 2 layers.
json base() {
  return json::parse(R"({
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 100
  })");
}

ModelConfig parse(const json& j) { return parse_config_json(j.dump(), "config.json"); }

std::string error_of(const json& j) {
  try {
    parse(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Distance in units in the last place between two positive floats.
int64_t ulps(float a, float b) { return std::llabs(static_cast<int64_t>(bits(a)) - static_cast<int64_t>(bits(b))); }

TEST(Config, RealPhi3Mini4k) {
  const std::string dir = test::shared_reference_dir();
  if (!file_exists(path_join(dir, "config.json")))
    GTEST_SKIP() << "no reference config at " << dir << "/config.json (Phi-3-mini-4k-instruct)";
  ModelConfig c = load_config(dir);
  EXPECT_EQ(c.architecture, "Phi3ForCausalLM");
  EXPECT_EQ(c.hidden_size, 3072);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 96);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.partial_rotary_factor, 1.0f);
  EXPECT_EQ(c.rotary_dim, 96);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_EQ(c.sliding_window, 2047);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.vocab_size, 32064);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 32000);
  EXPECT_EQ(c.pad_token_id, 32000);
  EXPECT_EQ(c.rope_attention_scale(), 1.0f);

  // Against torch (transformers' default rope, computed on CPU):
  //   1.0 / (10000.0 ** (torch.arange(0, 96, 2, dtype=torch.int64).float() / 96))
  // Bitwise equal except where torch's vectorised powf is 1 ulp off the correctly rounded
  // power (entry 20 of 48 here), so the bound is 1 ulp and the listed entries are exact.
  std::vector<float> f = c.inv_freq(31);
  ASSERT_EQ(f.size(), 48u);
  const std::pair<int, uint32_t> torch_bits[] = {{0, 0x3f800000}, {1, 0x3f534db0}, {2, 0x3f2e6928},
                                                 {12, 0x3dcccccd}, {24, 0x3c23d70a}, {47, 0x38fe1363}};
  for (auto [i, b] : torch_bits) EXPECT_EQ(bits(f[i]), b) << "inv_freq[" << i << "]";
  uint32_t t20 = 0x3cb07dc7;
  float torch20;
  std::memcpy(&torch20, &t20, 4);
  EXPECT_LE(ulps(f[20], torch20), 1);
  // Same frequencies whatever the length without scaling.
  EXPECT_EQ(c.inv_freq(100000), f);
}

TEST(Config, DefaultsWhenOptionalFieldsAreAbsent) {
  ModelConfig c = parse(base());
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.partial_rotary_factor, 1.0f);
  EXPECT_EQ(c.rotary_dim, 16);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  // transformers' Phi3Config default (4096), not max_position_embeddings.
  EXPECT_EQ(c.original_max_position_embeddings, 4096);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 32000);
  EXPECT_EQ(c.pad_token_id, 32000);

  // model_type alone identifies Phi-3 when architectures is absent.
  json j = base();
  j.erase("architectures");
  EXPECT_EQ(parse(j).hidden_size, 64);
}

TEST(Config, GroupedQueryAttention) {
  json j = base();
  j["num_attention_heads"] = 8;
  j["num_key_value_heads"] = 2;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  j["num_key_value_heads"] = nullptr;  // null: as many as the query heads
  EXPECT_EQ(parse(j).num_key_value_heads, 8);
}

TEST(Config, PartialRotaryHalf) {
  json j = base();
  j["partial_rotary_factor"] = 0.5;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.partial_rotary_factor, 0.5f);
  EXPECT_EQ(c.rotary_dim, 8);
  // theta^(-2i/8) with theta = 10^4: exactly 1, 0.1, 0.01, 0.001 before rounding.
  std::vector<float> f = c.inv_freq(10);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], 1.0f / 10.0f);
  EXPECT_EQ(f[2], 1.0f / 100.0f);
  EXPECT_EQ(f[3], 1.0f / 1000.0f);
}

TEST(Config, RopeThetaAndHandComputedFrequencies) {
  json j = base();
  j["rope_theta"] = 256.0;  // head_dim 16: 256^(-2i/16) = 2^(-i)
  std::vector<float> f = parse(j).inv_freq(1);
  ASSERT_EQ(f.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(f[i], std::ldexp(1.0f, -i)) << i;
}

json longrope_config() {
  json j = base();
  j["max_position_embeddings"] = 256;
  j["original_max_position_embeddings"] = 64;
  std::vector<double> sf, lf;
  for (int i = 0; i < 8; ++i) {
    sf.push_back(1.0 + 0.05 * i);
    lf.push_back(2.0 + 0.5 * i);
  }
  j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}};
  return j;
}

TEST(Config, LongRope) {
  ModelConfig c = parse(longrope_config());
  EXPECT_EQ(c.rope_scaling.type, "longrope");
  ASSERT_EQ(c.rope_scaling.short_factor.size(), 8u);
  ASSERT_EQ(c.rope_scaling.long_factor.size(), 8u);
  EXPECT_EQ(c.rope_scaling.short_factor[2], static_cast<float>(1.1));
  EXPECT_EQ(c.rope_scaling.long_factor[7], 5.5f);
  // sqrt(1 + ln(256/64) / ln(64)) = sqrt(4/3)
  EXPECT_FLOAT_EQ(c.rope_attention_scale(), static_cast<float>(std::sqrt(4.0 / 3.0)));

  // torch: 1.0 / (torch.tensor(factor, dtype=float32) * 10000.0 ** (arange(0,16,2).float() / 16))
  const uint32_t short_bits[] = {0x3f800000, 0x3e9a32dd, 0x3dba2e8c, 0x3ce143a1,
                                 0x3c088888, 0x3b25cb60, 0x3a49a634, 0x39759f12};
  const uint32_t long_bits[] = {0x3f000000, 0x3e0186e3, 0x3d088889, 0x3c1407de,
                                0x3b23d70a, 0x3a38374e, 0x3951b717, 0x387127d0};
  // The short factor up to original_max_position_embeddings, the long one beyond (transformers
  // picks by max(position_ids) + 1 > original_max_position_embeddings).
  std::vector<float> s = c.inv_freq(64), l = c.inv_freq(65);
  ASSERT_EQ(s.size(), 8u);
  ASSERT_EQ(l.size(), 8u);
  // Bitwise here (torch's powf happens to be correctly rounded for all of these).
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(bits(s[i]), short_bits[i]) << "short " << i << ": " << s[i];
    EXPECT_EQ(bits(l[i]), long_bits[i]) << "long " << i << ": " << l[i];
  }
  EXPECT_EQ(s[0], 1.0f);
  EXPECT_EQ(l[0], 0.5f);
  EXPECT_EQ(l[4], 1.0f / (4.0f * 100.0f));  // long factor 4, 10^4^(-1/2)
  EXPECT_EQ(s, c.inv_freq(1));
}

TEST(Config, LongRopeVariants) {
  // "su" is the old name of longrope.
  json j = longrope_config();
  j["rope_scaling"]["type"] = "su";
  EXPECT_EQ(parse(j).rope_scaling.type, "longrope");

  // Phi-3-mini-128k shape: max 131072, original 4096 -> sqrt(1 + ln 32 / ln 4096).
  j = longrope_config();
  j["max_position_embeddings"] = 131072;
  j["original_max_position_embeddings"] = 4096;
  EXPECT_FLOAT_EQ(parse(j).rope_attention_scale(), 1.19023807f);

  // No original_max_position_embeddings: transformers uses 4096, so max 256 gives factor < 1.
  j = longrope_config();
  j.erase("original_max_position_embeddings");
  ModelConfig c = parse(j);
  EXPECT_EQ(c.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_attention_scale(), 1.0f);
  EXPECT_EQ(c.inv_freq(256), c.inv_freq(1));  // short factor up to 4096

  // Explicit factor / attention_factor override the ratio and the formula.
  j = longrope_config();
  j["rope_scaling"]["factor"] = 16.0;
  EXPECT_FLOAT_EQ(parse(j).rope_attention_scale(), static_cast<float>(std::sqrt(1.0 + std::log(16.0) / std::log(64.0))));
  j["rope_scaling"]["attention_factor"] = 1.25;
  EXPECT_EQ(parse(j).rope_attention_scale(), 1.25f);
}

TEST(Config, Transformers5RopeParameters) {
  // What transformers 5 saves: "rope_parameters" (with rope_theta inside) and no rope_scaling.
  json j = base();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}, {"partial_rotary_factor", 0.5}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_EQ(c.rope_scaling.type, "");

  j = longrope_config();
  j["rope_parameters"] = j["rope_scaling"];
  j["rope_parameters"]["rope_type"] = "longrope";
  j["rope_parameters"]["rope_theta"] = 10000.0;
  j["rope_scaling"] = nullptr;  // null rope_scaling next to rope_parameters (tools/ writes both)
  c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "longrope");
  EXPECT_EQ(c.inv_freq(65), parse(longrope_config()).inv_freq(65));

  // rope_scaling, when set, wins over rope_parameters; values inside win over top-level ones.
  j = base();
  j["rope_theta"] = 10000.0;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  EXPECT_EQ(parse(j).rope_theta, 500000.0f);
}

TEST(Config, SlidingWindowTiedEmbeddingsAndTokenIds) {
  json j = base();
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {32007, 32000};
  j["pad_token_id"] = nullptr;
  j["bos_token_id"] = 5;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 32007);  // first of the list
  EXPECT_EQ(c.pad_token_id, 32007);  // null pad -> eos
  EXPECT_EQ(c.bos_token_id, 5);
  j["sliding_window"] = 2047;
  EXPECT_EQ(parse(j).sliding_window, 2047);
}

TEST(Config, BadConfigs) {
  struct Case {
    const char* what;
    json cfg;
    const char* message;
  };
  std::vector<Case> cases;
  auto with = [](const char* key, json v) {
    json j = base();
    j[key] = std::move(v);
    return j;
  };
  auto without = [](const char* key) {
    json j = base();
    j.erase(key);
    return j;
  };
  cases.push_back({"string size", with("hidden_size", "3072"),
                   "config.json: field 'hidden_size': expected an integer, got string"});
  cases.push_back({"fractional size", with("num_hidden_layers", 2.5),
                   "field 'num_hidden_layers': expected an integer, got non-integer number 2.5"});
  cases.push_back({"missing field", without("num_hidden_layers"), "field 'num_hidden_layers': missing (required)"});
  cases.push_back({"null size", with("vocab_size", nullptr), "field 'vocab_size': expected an integer, got null"});
  cases.push_back({"negative size", with("intermediate_size", -5), "field 'intermediate_size': must be positive"});
  cases.push_back({"zero heads", with("num_attention_heads", 0), "field 'num_attention_heads': must be positive"});
  cases.push_back({"unsupported architecture", with("architectures", json::array({"MambaForCausalLM"})),
                   "field 'architectures': no supported architecture in [\"MambaForCausalLM\"] (supported: "
                   "Phi3ForCausalLM (phi3), Qwen2ForCausalLM (qwen2), LlamaForCausalLM (llama), MistralForCausalLM (mistral), Qwen3ForCausalLM (qwen3), Gemma2ForCausalLM (gemma2), "
                   "Gemma3ForCausalLM (gemma3_text), Gemma3ForConditionalGeneration (gemma3), GPT2LMHeadModel (gpt2), "
                   "MixtralForCausalLM (mixtral), Qwen3MoeForCausalLM (qwen3_moe), OlmoeForCausalLM (olmoe))"});
  cases.push_back({"architecture and model_type disagree", with("architectures", json::array({"LlamaForCausalLM"})),
                   "field 'model_type': expected 'llama' for LlamaForCausalLM, got 'phi3'"});
  cases.push_back({"architectures not a list", with("architectures", "Phi3ForCausalLM"),
                   "field 'architectures': expected a list of strings, got string"});
  {
    json j = without("architectures");
    j["model_type"] = "mamba";
    cases.push_back({"other model_type", j, "field 'model_type': unsupported model_type 'mamba' (supported: Phi3ForCausalLM"});
    j.erase("model_type");
    cases.push_back({"neither", j, "field 'architectures': missing"});
  }
  cases.push_back({"heads do not divide hidden", with("num_attention_heads", 5),
                   "field 'num_attention_heads': 5 does not divide hidden_size 64"});
  cases.push_back({"kv heads do not divide heads", with("num_key_value_heads", 3),
                   "field 'num_key_value_heads': 3 does not divide num_attention_heads 4"});
  cases.push_back({"head_dim other than D/H", with("head_dim", 32), "field 'head_dim': 32 differs from"});
  cases.push_back({"odd rotary dim", with("partial_rotary_factor", 0.3125),
                   "field 'partial_rotary_factor': gives rotary_dim 5 for head_dim 16; it must be even"});
  cases.push_back({"rotary factor > 1", with("partial_rotary_factor", 1.5),
                   "field 'partial_rotary_factor': must be in (0, 1]"});
  cases.push_back({"eps as string", with("rms_norm_eps", "1e-5"),
                   "field 'rms_norm_eps': expected a number, got string"});
  cases.push_back({"negative theta", with("rope_theta", -1.0), "field 'rope_theta': must be positive"});
  cases.push_back({"tie as string", with("tie_word_embeddings", "false"),
                   "field 'tie_word_embeddings': expected true or false, got string"});
  cases.push_back({"rope_scaling not an object", with("rope_scaling", json::array({1})),
                   "field 'rope_scaling': expected an object or null, got array"});
  cases.push_back({"eos empty list", with("eos_token_id", json::array()), "field 'eos_token_id': is an empty list"});
  {
    json j = longrope_config();
    j["rope_scaling"]["short_factor"] = {1.0, 1.0, 1.0};
    cases.push_back({"short factor length", j,
                     "field 'rope_scaling.short_factor': has 3 entries but rotary_dim / 2 = 8"});
    j = longrope_config();
    j["rope_scaling"].erase("long_factor");
    cases.push_back({"long factor missing", j, "field 'rope_scaling.long_factor': missing (required for longrope)"});
    j = longrope_config();
    j["rope_scaling"]["long_factor"][3] = "x";
    cases.push_back({"long factor entry", j, "field 'rope_scaling.long_factor': expected a list of numbers, entry 3 is string"});
    j = longrope_config();
    j["rope_scaling"]["type"] = "dynamic";
    cases.push_back({"unsupported rope", j,
                     "field 'rope_scaling.type': unsupported rope type 'dynamic' for Phi3ForCausalLM (supported: longrope, or none)"});
  }
  for (const Case& c : cases) EXPECT_THAT(error_of(c.cfg), HasSubstr(c.message)) << c.what;

  EXPECT_THAT([] {
    try {
      parse_config_json("{\"hidden_size\": ", "x/config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }(), HasSubstr("x/config.json: not valid JSON"));
  EXPECT_THAT([] {
    try {
      parse_config_json("[1]", "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }(), HasSubstr("config.json: expected a JSON object, got array"));
}

TEST(Config, LoadConfigNamesThePath) {
  const std::string dir = test::temp_dir("config-missing");
  try {
    load_config(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot read model config '" + dir + "/config.json'"));
  }
  write_file_atomic(path_join(dir, "config.json"), "{\"hidden_size\": \"x\"}");
  try {
    load_config(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(dir + "/config.json: field"));
  }
}

}  // namespace
}  // namespace phi3
