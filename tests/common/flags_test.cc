#include "common/flags.h"

#include <tuple>

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

TEST(FlagSetTest, BooleansTakeOnAndOff) {
  bool guard = true;
  FlagSet flags("prog", "usage");
  flags.Bool("guard", &guard, "");
  Args off({"--guard=off"});
  ASSERT_TRUE(flags.Parse(off.argc(), off.argv.data()).ok());
  EXPECT_FALSE(guard);
  Args on({"--guard=on"});
  ASSERT_TRUE(flags.Parse(on.argc(), on.argv.data()).ok());
  EXPECT_TRUE(guard);
  Args bad({"--guard=maybe"});
  EXPECT_FALSE(flags.Parse(bad.argc(), bad.argv.data()).ok());
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

TEST(FlagSetTest, DurationsRejectNonFiniteNegativeAndAbsurdValues) {
  // --grace=inf used to be accepted and then overflowed MonotonicNanos() + INT64_MAX.
  absl::Duration grace = absl::Seconds(2), interval = absl::Seconds(1);
  FlagSet flags("prog", "usage");
  flags.Duration("grace", &grace, "");
  flags.Duration("interval", &interval, "", absl::Milliseconds(10), absl::Hours(1));
  for (const std::string arg :
       {"--grace=inf", "--grace=infinite", "--grace=-inf", "--grace=nan", "--grace=1e300",
        "--grace=1e300s", "--grace=-1", "--grace=-5ms", "--grace=9000h",
        "--grace=", "--interval=1ns", "--interval=9ms", "--interval=2h", "--interval=0"}) {
    Args args({arg});
    auto result = flags.Parse(args.argc(), args.argv.data());
    ASSERT_FALSE(result.ok()) << arg;
    const absl::string_view message = result.status().message();
    EXPECT_NE(message.find(arg.substr(0, arg.find('='))), absl::string_view::npos) << message;
    EXPECT_NE(message.find("expected a duration from"), absl::string_view::npos) << message;
    EXPECT_EQ(message.find('\n'), absl::string_view::npos) << message;
  }
  EXPECT_EQ(grace, absl::Seconds(2));  // untouched by every rejected value
  EXPECT_EQ(interval, absl::Seconds(1));
  for (const auto& [arg, grace_want, interval_want] :
       std::vector<std::tuple<std::string, absl::Duration, absl::Duration>>{
           {"--grace=0", absl::ZeroDuration(), absl::Seconds(1)},
           {"--grace=8760h", kMaxDurationFlag, absl::Seconds(1)},
           {"--interval=10ms", kMaxDurationFlag, absl::Milliseconds(10)},
           {"--interval=0.5", kMaxDurationFlag, absl::Milliseconds(500)}}) {
    Args args({arg});
    auto result = flags.Parse(args.argc(), args.argv.data());
    ASSERT_TRUE(result.ok()) << arg << ": " << result.status();
    EXPECT_EQ(grace, grace_want) << arg;
    EXPECT_EQ(interval, interval_want) << arg;
  }
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
