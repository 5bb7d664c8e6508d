// `phi3patch verify --reference DIR` on every folder committed under data/reference/ (issue 30
// item 5): the transformers dumps of tools/make_reference.py (reference.json) and the
// long-prompt reference of tools/make_long_reference.py (long_reference.json) both pass, run as
// a user runs them, through the binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> all_reference_dirs() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(test::source_dir() + "/data/reference"))
    if (e.is_directory()) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(VerifyAllReferences, EveryFolderHasAKnownLayout) {
  const auto dirs = all_reference_dirs();
  EXPECT_GE(dirs.size(), 11u);
  EXPECT_NE(std::find(dirs.begin(), dirs.end(), "long-t2048"), dirs.end());
  for (const auto& d : dirs) {
    const fs::path p = fs::path(test::source_dir()) / "data/reference" / d;
    EXPECT_TRUE(fs::exists(p / "reference.json") || fs::exists(p / "long_reference.json")) << d;
  }
}

class VerifyCli : public ::testing::TestWithParam<std::string> {};

TEST_P(VerifyCli, Passes) {
  const std::string dir = test::temp_dir("verify_cli_" + GetParam());
  const std::string ref = test::source_dir() + "/data/reference/" + GetParam();
  const int code = test::run_cli(PHI3_CLI, "verify --device cpu --reference " + ref, dir);
  const std::string out = test::slurp(dir + "/stdout.txt");
  EXPECT_EQ(code, 0) << out << test::slurp(dir + "/stderr.txt");
  EXPECT_NE(out.find("PASS: 0 of "), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Data, VerifyCli, ::testing::ValuesIn(all_reference_dirs()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           for (char& c : s)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

}  // namespace
}  // namespace phi3
