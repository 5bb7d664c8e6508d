// `--help` on every command (issue 22 item 4): it prints the command's usage, and the usage
// names exactly the options the parser accepts (no undocumented option, none documented that
// is refused).
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "patching/cli/command_specs.h"
#include "test_util.h"

namespace phi3 {
namespace {

std::set<std::string> options_named_in(const std::string& text) {
  std::set<std::string> out;
  static const std::regex opt(R"((^|[^A-Za-z0-9-])--([a-z0-9][a-z0-9-]*))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), opt); it != std::sregex_iterator(); ++it)
    out.insert((*it)[2].str());
  return out;
}

std::string joined(const std::set<std::string>& s) {
  std::string r;
  for (const auto& x : s) r += " --" + x;
  return r;
}

TEST(CliHelp, EveryCommandHasHelpNamingExactlyItsOptions) {
  const std::string dir = test::temp_dir("cli-help");
  ASSERT_EQ(command_specs().size(), 8u);
  for (const auto& spec : command_specs()) {
    SCOPED_TRACE(spec.name);
    ASSERT_EQ(test::run_cli(PHI3_CLI, spec.name + " --help", dir), 0) << test::slurp(dir + "/stderr.txt");
    const std::string help = test::slurp(dir + "/stdout.txt");
    EXPECT_EQ(help, spec.usage);
    EXPECT_NE(help.find("usage: phi3patch"), std::string::npos);
    std::set<std::string> accepted = spec.options;
    accepted.insert(spec.flags.begin(), spec.flags.end());
    EXPECT_TRUE(accepted.count("help"));
    const std::set<std::string> named = options_named_in(help);
    std::set<std::string> undocumented, refused;
    for (const auto& o : accepted)
      if (!named.count(o)) undocumented.insert(o);
    for (const auto& o : named)
      if (!accepted.count(o)) refused.insert(o);
    EXPECT_TRUE(undocumented.empty()) << "accepted but not in --help:" << joined(undocumented);
    EXPECT_TRUE(refused.empty()) << "in --help but refused:" << joined(refused);
    // The parser takes every option of the spec (with --help nothing runs) and refuses others.
    std::string all;
    for (const auto& o : spec.options) all += " --" + o + " x";
    for (const auto& f : spec.flags) all += " --" + f;
    EXPECT_EQ(test::run_cli(PHI3_CLI, spec.name + all, dir), 0) << test::slurp(dir + "/stderr.txt");
    EXPECT_EQ(test::run_cli(PHI3_CLI, spec.name + " --no-such-option", dir), 2);
    EXPECT_NE(test::slurp(dir + "/stderr.txt").find("unknown option '--no-such-option'"), std::string::npos);
  }
}

TEST(CliHelp, ShortFormsAndHelpCommand) {
  const std::string dir = test::temp_dir("cli-help-short");
  ASSERT_EQ(test::run_cli(PHI3_CLI, "make-random -h", dir), 0);
  EXPECT_EQ(test::slurp(dir + "/stdout.txt"), command_spec("make-random").usage);
  ASSERT_EQ(test::run_cli(PHI3_CLI, "help circuit", dir), 0);
  EXPECT_EQ(test::slurp(dir + "/stdout.txt"), command_spec("circuit").usage);
  ASSERT_EQ(test::run_cli(PHI3_CLI, "--help", dir), 0);
  const std::string top = test::slurp(dir + "/stdout.txt");
  EXPECT_EQ(top, command_spec("run").usage);
  for (const auto& spec : command_specs()) EXPECT_NE(top.find("\n  " + spec.name + " "), std::string::npos) << spec.name;
  EXPECT_EQ(test::run_cli(PHI3_CLI, "frobnicate", dir), 2);
  EXPECT_NE(test::slurp(dir + "/stderr.txt").find("commands: run, forward"), std::string::npos);
}

}  // namespace
}  // namespace phi3
