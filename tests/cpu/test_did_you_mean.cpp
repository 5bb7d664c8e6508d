// "Did you mean" (issue 30 item 4): one helper (runtime/closest_name.h) suggests the closest
// valid name for every unknown command, option, hook, method, metric, direction, recompute
// value, device, --like shape and pairs key; --hooks accepts TransformerLens names. The CLI
// messages are asserted exactly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/hooks.h"
#include "runtime/closest_name.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(ClosestName, EditDistance) {
  EXPECT_EQ(edit_distance("run", "run"), 0);
  EXPECT_EQ(edit_distance("rnu", "run"), 1);  // a swap of neighbours is one edit
  EXPECT_EQ(edit_distance("hook", "hooks"), 1);
  EXPECT_EQ(edit_distance("answr", "answer"), 1);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3);
  EXPECT_EQ(edit_distance("", "abc"), 3);
}

TEST(ClosestName, SuggestsOnlyWhatIsClose) {
  const std::vector<std::string> commands = {"run", "forward", "tokenize", "circuit", "verify", "accuracy", "bench"};
  EXPECT_EQ(closest_name("rnu", commands), "run");
  EXPECT_EQ(closest_name("fowrard", commands), "forward");
  EXPECT_EQ(closest_name("Bench", commands), "bench");      // case-insensitive
  EXPECT_EQ(closest_name("tok", commands), "tokenize");     // a prefix of 3+ characters
  EXPECT_EQ(closest_name("circuits", commands), "circuit");
  EXPECT_EQ(closest_name("frobnicate", commands), "");
  EXPECT_EQ(closest_name("x", {"z", "q"}), "");             // one letter: never all of it replaced
  EXPECT_EQ(closest_name("ru", commands), "run");
  EXPECT_EQ(closest_name("", commands), "");
  // Within the edit limit beats a longer prefix match; ties go to the first candidate.
  EXPECT_EQ(closest_name("resid", {"resid_pre", "resid_mid", "resid_post"}), "resid_pre");
  EXPECT_EQ(closest_name("mlp", {"mlp_out", "mlp_post"}), "mlp_out");
  EXPECT_EQ(did_you_mean("hook", {"hooks", "method"}, "--"), "; did you mean --hooks?");
  EXPECT_EQ(did_you_mean("zzzz", {"hooks", "method"}, "--"), "");
}

TEST(HookNames, TransformerLensNamesAndLayers) {
  struct Case {
    const char* name;
    Hook hook;
    int layer;
  };
  for (const Case& c : std::vector<Case>{{"resid_pre", Hook::ResidPre, -1},
                                         {"hook_resid_pre", Hook::ResidPre, -1},
                                         {"blocks.hook_resid_pre", Hook::ResidPre, -1},
                                         {"blocks.3.hook_resid_pre", Hook::ResidPre, 3},
                                         {"blocks.12.hook_resid_post", Hook::ResidPost, 12},
                                         {"hook_resid_mid", Hook::ResidMid, -1},
                                         {"hook_attn_out", Hook::AttnOut, -1},
                                         {"blocks.0.hook_mlp_out", Hook::MlpOut, 0},
                                         {"attn.hook_z", Hook::Z, -1},
                                         {"blocks.attn.hook_z", Hook::Z, -1},
                                         {"blocks.1.attn.hook_z", Hook::Z, 1},
                                         {"hook_z", Hook::Z, -1},
                                         {"z_all_pos", Hook::ZAllPos, -1},
                                         {"attn.hook_q", Hook::Q, -1},
                                         {"blocks.2.attn.hook_k", Hook::K, 2},
                                         {"attn.hook_v", Hook::V, -1},
                                         {"attn.hook_pattern", Hook::Pattern, -1},
                                         {"mlp.hook_post", Hook::MlpPost, -1},
                                         {"blocks.3.mlp.hook_post", Hook::MlpPost, 3},
                                         {"mlp_post", Hook::MlpPost, -1}}) {
    const HookSpec s = parse_hook_spec(c.name);
    EXPECT_EQ(hook_name(s.hook), hook_name(c.hook)) << c.name;
    EXPECT_EQ(s.layer, c.layer) << c.name;
    EXPECT_EQ(hook_name(parse_hook(c.name)), hook_name(c.hook)) << c.name;  // parse_hook: the layer dropped
  }
  const auto list = parse_hook_spec_list("resid_pre, blocks.3.attn.hook_z,mlp.hook_post");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[1].layer, 3);
  EXPECT_EQ(parse_hook_list("hook_resid_pre,attn.hook_z").size(), 2u);
}

const std::string kKnown =
    " (known: resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, z_all_pos, q, q_all_pos, k, k_all_pos, v, "
    "v_all_pos, pattern, pattern_all_pos, mlp_post, router, or their TransformerLens names such as hook_resid_pre, "
    "attn.hook_z, blocks.3.hook_resid_pre)";

TEST(HookNames, UnknownHooksSuggestInTheFormGiven) {
  EXPECT_EQ(test::error_of([] { parse_hook("resid_pr"); }), "unknown hook 'resid_pr'; did you mean resid_pre?" + kKnown);
  EXPECT_EQ(test::error_of([] { parse_hook("hook_resid_pr"); }),
            "unknown hook 'hook_resid_pr'; did you mean hook_resid_pre?" + kKnown);
  EXPECT_EQ(test::error_of([] { parse_hook("blocks.3.attn.hook_zz"); }),
            "unknown hook 'blocks.3.attn.hook_zz'; did you mean blocks.3.attn.hook_z?" + kKnown);
  EXPECT_EQ(test::error_of([] { parse_hook("mlp.hook_pst"); }), "unknown hook 'mlp.hook_pst'; did you mean mlp.hook_post?" + kKnown);
  EXPECT_EQ(test::error_of([] { parse_hook("hook_embed"); }), "unknown hook 'hook_embed'" + kKnown);
  EXPECT_EQ(test::error_of([] { parse_hook("blocks.x.hook_resid_pre"); }),
            "unknown hook 'blocks.x.hook_resid_pre'; did you mean blocks.hook_resid_pre?" + kKnown);
}

// The binary's one "phi3patch: error: " line for `args` (exit code 2 expected).
std::string cli_error(const std::string& args) {
  const std::string dir = test::temp_dir("dym");
  const int code = test::run_cli(PHI3_CLI, args, dir);
  const std::string err = test::slurp(dir + "/stderr.txt");
  std::filesystem::remove_all(dir);
  EXPECT_EQ(code, 2) << args << "\n" << err;
  const std::string p = "phi3patch: error: ";
  EXPECT_EQ(err.rfind(p, 0), 0u) << err;
  return err.substr(p.size(), err.find('\n') - p.size());
}

TEST(DidYouMean, CliMessages) {
  EXPECT_EQ(cli_error("rnu"),
            "unknown command 'rnu'; did you mean run? (commands: run, forward, tokenize, circuit, verify, accuracy, "
            "bench, make-random)");
  EXPECT_EQ(cli_error("help circuitt"),
            "unknown command 'circuitt'; did you mean circuit? (commands: run, forward, tokenize, circuit, verify, "
            "accuracy, bench, make-random)");
  EXPECT_EQ(cli_error("frobnicate"),
            "unknown command 'frobnicate' (commands: run, forward, tokenize, circuit, verify, accuracy, bench, "
            "make-random)");
  EXPECT_EQ(cli_error("run --hook resid_pre"), "unknown option '--hook'; did you mean --hooks? (see --help)");
  EXPECT_EQ(cli_error("--hook resid_pre"), "unknown option '--hook'; did you mean --hooks? (see --help)");
  EXPECT_EQ(cli_error("circuit --edge-grids 1"), "unknown option '--edge-grids'; did you mean --edge-grid? (see --help)");
  EXPECT_EQ(cli_error("run --frobnicate 3"), "unknown option '--frobnicate' (see --help)");
  EXPECT_EQ(cli_error("forward --hooks z"),
            "unknown option '--hooks' for forward (an option of run, bench; see phi3patch forward --help)");
  EXPECT_EQ(cli_error("tokenize --device cpu hi"),
            "unknown option '--device' for tokenize (an option of run, forward, circuit, verify, accuracy, bench; see "
            "phi3patch tokenize --help)");
  EXPECT_EQ(cli_error("run --hooks resid_pr"), "unknown hook 'resid_pr'; did you mean resid_pre?" + kKnown);
  EXPECT_EQ(cli_error("run --method atribution"),
            "--method: expected attribution, atp-star, activation, both or all (comma-separated), got 'atribution'; did "
            "you mean attribution?");
  EXPECT_EQ(cli_error("run --method attribution,atp_star"),
            "--method: expected attribution, atp-star, activation, both or all (comma-separated), got 'atp_star'; did "
            "you mean atp-star?");
  EXPECT_EQ(cli_error("run --metric logit_diff"),
            "unknown metric 'logit_diff' (--metric); did you mean logit-diff? (expected one of "
            "logit-diff|prob-diff|logprob|kl)");
  EXPECT_EQ(cli_error("run --metric entropy"),
            "unknown metric 'entropy' (--metric): expected one of logit-diff|prob-diff|logprob|kl");
  EXPECT_EQ(cli_error("run --direction denoising"),
            "--direction: expected denoise or noise, got 'denoising'; did you mean denoise?");
  EXPECT_EQ(cli_error("run --recompute offf"), "--recompute: expected auto, on or off, got 'offf'; did you mean off?");
  EXPECT_EQ(cli_error("forward --device cuad"),
            "--device 'cuad': unknown device; did you mean cuda? (expected cpu, cuda or auto)");
  EXPECT_EQ(cli_error("circuit --method eap_ig"), "--method: expected eap or eap-ig, got 'eap_ig'; did you mean eap-ig?");
  EXPECT_EQ(cli_error("circuit --select greedyy"),
            "--select: expected top-k or greedy, got 'greedyy'; did you mean greedy?");
  EXPECT_EQ(cli_error("circuit --direction nois"), "--direction: expected denoise or noise, got 'nois'; did you mean noise?");
  const std::string shapes =
      " (expected one of phi-3-mini, phi-3-mini-128k, phi-3-medium, phi-4-mini, tiny, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, "
      "qwen2.5-7b, qwen2.5-14b, qwen2.5-32b, qwen2.5-72b, llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, llama-3.1-70b, "
      "mistral-7b, mistral-nemo-12b, qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen3-14b, qwen3-32b, gemma-2-2b, "
      "gemma-2-9b, gemma-2-27b, gemma-3-1b, gemma-3-4b, gemma-3-12b, gemma-3-27b, qwen3-30b-a3b, olmoe-1b-7b, "
      "mixtral-8x7b, phi-3.5-moe, gpt2, gpt2-medium, gpt2-large, gpt2-xl)";
  EXPECT_EQ(cli_error("make-random --out /tmp/never-written --like phi-3-mni"),
            "--like: unknown shape 'phi-3-mni'; did you mean phi-3-mini?" + shapes);
  EXPECT_EQ(cli_error("make-random --out /tmp/never-written --like qwen2.5-7"),
            "--like: unknown shape 'qwen2.5-7'; did you mean qwen2.5-7b?" + shapes);
  EXPECT_EQ(cli_error("bench --predict h100 --like llama-3-8b"),
            "--like: unknown shape 'llama-3-8b'; did you mean llama-3.1-8b?" + shapes);
  EXPECT_EQ(cli_error("make-random --out /tmp/never-written --like gpt-2"),
            "--like: unknown shape 'gpt-2'; did you mean gpt2?" + shapes);
  EXPECT_EQ(cli_error("make-random --out /tmp/never-written --like bloom"), "--like: unknown shape 'bloom'" + shapes);
  EXPECT_EQ(cli_error("bench --predict h10"), "--predict: expected h100 or h200, got 'h10'; did you mean h100?");
  EXPECT_EQ(cli_error("make-random --out /tmp/never-written --dtype bf61"),
            "--dtype: expected bf16 or f32, got 'bf61'; did you mean bf16?");
}

TEST(DidYouMean, PairsKeyAsWritten) {
  const std::string dir = test::temp_dir("dym-pairs");
  {
    std::ofstream(dir + "/pairs.json")
        << R"([{"clean": {"question": "The goal is to win. The answer is:", "answer": "short"},
                "corupted": {"question": "The goal is to last. The answer is:", "answer": "long"}}])";
  }
  EXPECT_EQ(cli_error("forward --device cpu --pairs " + dir + "/pairs.json"),
            dir + "/pairs.json: pair 0: unknown key \"corupted\"; did you mean \"corrupted\"?");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace phi3
