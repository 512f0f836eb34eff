#include "common/flags.h"

#include "common/net.h"
#include "gtest/gtest.h"

namespace upcase {
namespace {

struct Args {
  std::vector<std::string> storage;
  std::vector<char*> argv;
  explicit Args(std::vector<std::string> a) : storage(std::move(a)) {
    storage.insert(storage.begin(), "prog");
    for (std::string& s : storage) argv.push_back(s.data());
  }
  int argc() const { return static_cast<int>(argv.size()); }
};

TEST(FlagSetTest, ParsesEveryKindAndBothSyntaxes) {
  bool pin = false, verify = true;
  std::int64_t shards = 0;
  std::uint64_t buffer = 0;
  std::string proto = "both";
  absl::Duration duration = absl::Seconds(10);
  FlagSet flags("prog", "usage");
  flags.Bool("pin", &pin, "");
  flags.Bool("verify", &verify, "");
  flags.Int("shards", &shards, 0, 64, "");
  flags.Bytes("conn-buffer", &buffer, "");
  flags.String("proto", &proto, "", {"tcp", "udp", "both"});
  flags.Duration("duration", &duration, "");
  Args args({"--pin", "--no-verify", "--shards", "4", "--conn-buffer=64K", "--proto=udp",
             "--duration=250ms", "host", "5050"});
  auto positional = flags.Parse(args.argc(), args.argv.data());
  ASSERT_TRUE(positional.ok()) << positional.status();
  EXPECT_EQ(*positional, (std::vector<std::string>{"host", "5050"}));
  EXPECT_TRUE(pin);
  EXPECT_FALSE(verify);
  EXPECT_EQ(shards, 4);
  EXPECT_EQ(buffer, 65536u);
  EXPECT_EQ(proto, "udp");
  EXPECT_EQ(duration, absl::Milliseconds(250));
}

TEST(FlagSetTest, RejectsBadInputWithTheFlagName) {
  std::int64_t shards = 0;
  std::string proto = "both";
  FlagSet flags("prog", "usage");
  flags.Int("shards", &shards, 0, 64, "");
  flags.String("proto", &proto, "", {"tcp", "udp"});
  for (const auto& [arg, needle] :
       std::vector<std::pair<std::string, std::string>>{{"--shards=65", "--shards='65'"},
                                                        {"--shards=x", "--shards='x'"},
                                                        {"--proto=sctp", "tcp, udp"},
                                                        {"--nope", "unknown flag '--nope'"},
                                                        {"--shards", "needs a value"}}) {
    Args args({arg});
    auto result = flags.Parse(args.argc(), args.argv.data());
    ASSERT_FALSE(result.ok()) << arg;
    EXPECT_NE(result.status().message().find(needle), absl::string_view::npos)
        << result.status().message();
  }
}

TEST(FlagSetTest, ErrorsStayOneLineWhateverTheInput) {
  // Found by tests/fuzz/parsers_fuzz: an argument with a newline used to be echoed verbatim.
  std::int64_t shards = 0;
  FlagSet flags("prog", "usage");
  flags.Int("shards", &shards, 0, 64, "");
  for (std::string arg : {"--shards=1\nfake second line", "--bad\r\nflag", "--shards=\x01"}) {
    Args args({arg});
    auto result = flags.Parse(args.argc(), args.argv.data());
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().message().find_first_of("\r\n"), absl::string_view::npos)
        << result.status().message();
  }
  EXPECT_EQ(ParsePort("50\n50").status().message().find('\n'), absl::string_view::npos);
}

TEST(ParseBytesTest, Suffixes) {
  EXPECT_EQ(*ParseBytes("1M"), 1u << 20);
  EXPECT_EQ(*ParseBytes("3k"), 3u * 1024);
  EXPECT_EQ(*ParseBytes("17"), 17u);
  EXPECT_FALSE(ParseBytes("").ok());
  EXPECT_FALSE(ParseBytes("1.5M").ok());
}

}  // namespace
}  // namespace upcase
