// The environment fingerprint (common/env.h) on a fake host tree, its advice, and that the real
// host gives a complete fingerprint without crashing.
#include "common/env.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace upcase {
namespace {

class FakeHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("upcase-env-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  void Write(const std::string& path, const std::string& text) {
    const std::filesystem::path p = root_ / path.substr(1);
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  nlohmann::json Fingerprint() { return EnvFingerprint({root_.string(), /*probe_live=*/false}); }
  std::filesystem::path root_;
};

// Every key of the fingerprint, so that scripts can rely on their presence.
constexpr const char* kKeys[] = {
    "kernel",
    "cpu_model",
    "cpus_online",
    "virtualization",
    "clocksource",
    "scaling_driver",
    "scaling_governor",
    "boost",
    "smt",
    "mitigations",
    "isolcpus",
    "nohz_full",
    "irqbalance",
    "io_uring",
    "io_uring_disabled",
    "io_uring_ops",
    "liburing",
    "rmem_max",
    "wmem_max",
    "busy_poll",
    "busy_read",
    "transparent_hugepage",
    "perf_event_paranoid",
};

TEST_F(FakeHostTest, AnEmptyTreeGivesNullsNotACrash) {
  const nlohmann::json env = Fingerprint();
  for (const char* key : kKeys) {
    ASSERT_TRUE(env.contains(key)) << key;
    if (std::string(key) != "liburing") {
      EXPECT_TRUE(env.at(key).is_null()) << key;
    }
  }
  // Nothing known, nothing advised.
  EXPECT_TRUE(EnvCheck(env).empty());
}

TEST_F(FakeHostTest, ReadsATunedBareMetalHost) {
  Write("/proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
  Write("/proc/cpuinfo",
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme sse2 avx2\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme sse2 avx2\n");
  Write("/sys/devices/system/cpu/online", "0-1\n");
  Write("/sys/devices/system/clocksource/clocksource0/current_clocksource", "tsc\n");
  for (const char* cpu : {"cpu0", "cpu1"}) {
    Write(std::string("/sys/devices/system/cpu/") + cpu + "/cpufreq/scaling_governor",
          "performance\n");
    Write(std::string("/sys/devices/system/cpu/") + cpu + "/cpufreq/scaling_driver",
          "acpi-cpufreq\n");
  }
  Write("/sys/devices/system/cpu/cpufreq/boost", "0\n");
  Write("/sys/devices/system/cpu/smt/control", "off\n");
  Write("/sys/devices/system/cpu/vulnerabilities/meltdown", "Not affected\n");
  Write("/sys/devices/system/cpu/vulnerabilities/spectre_v2", "Mitigation: Retpolines\n");
  Write("/proc/cmdline", "BOOT_IMAGE=/vmlinuz isolcpus=1 nohz_full=1 quiet\n");
  Write("/proc/1/comm", "systemd\n");
  Write("/proc/sys/net/core/rmem_max", "212992\n");
  Write("/proc/sys/net/core/busy_poll", "0\n");
  Write("/sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n");
  Write("/proc/sys/kernel/perf_event_paranoid", "2\n");
  const nlohmann::json env = Fingerprint();
  EXPECT_EQ(env["kernel"], "6.1.0-18-amd64");
  EXPECT_EQ(env["cpu_model"], "AMD EPYC 7B13");
  EXPECT_EQ(env["cpus_online"], "0-1");
  EXPECT_EQ(env["virtualization"], "none");
  EXPECT_EQ(env["clocksource"], "tsc");
  EXPECT_EQ(env["scaling_governor"], "performance");
  EXPECT_EQ(env["scaling_driver"], "acpi-cpufreq");
  EXPECT_EQ(env["boost"], false);
  EXPECT_EQ(env["smt"], "off");
  EXPECT_EQ(env["mitigations"]["spectre_v2"], "Mitigation: Retpolines");
  EXPECT_EQ(env["isolcpus"], "1");
  EXPECT_EQ(env["nohz_full"], "1");
  EXPECT_EQ(env["irqbalance"], false);
  EXPECT_EQ(env["rmem_max"], 212992);
  EXPECT_TRUE(env["wmem_max"].is_null());
  EXPECT_EQ(env["busy_poll"], 0);
  EXPECT_EQ(env["transparent_hugepage"], "madvise");
  EXPECT_EQ(env["perf_event_paranoid"], 2);
  EXPECT_TRUE(EnvCheck(env).empty()) << FormatEnvCheck(EnvCheck(env));
}

TEST_F(FakeHostTest, AdvisesOnAnUntunedVirtualHost) {
  Write("/proc/cpuinfo", "model name\t: Intel Xeon\nflags\t\t: fpu hypervisor sse2\n");
  Write("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n");
  Write("/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "performance\n");
  Write("/sys/devices/system/cpu/cpu0/cpufreq/scaling_driver", "intel_pstate\n");
  Write("/sys/devices/system/cpu/intel_pstate/no_turbo", "0\n");
  Write("/sys/devices/system/cpu/smt/control", "on\n");
  Write("/proc/cmdline", "quiet -- isolcpus=1\n");  // after "--": init's, not the kernel's
  Write("/proc/77/comm", "irqbalance\n");
  Write("/sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet\n");
  Write("/sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n");
  const nlohmann::json env = Fingerprint();
  EXPECT_EQ(env["virtualization"], "hypervisor");
  EXPECT_EQ(env["scaling_governor"], "performance,powersave");
  EXPECT_EQ(env["boost"], true);
  EXPECT_EQ(env["isolcpus"], false);
  EXPECT_EQ(env["irqbalance"], true);
  std::vector<std::string> keys;
  for (const EnvAdvice& a : EnvCheck(env)) {
    keys.push_back(a.key);
    EXPECT_FALSE(a.fix.empty()) << a.key;
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"virtualization", "scaling_governor", "boost", "smt",
                                            "isolcpus", "irqbalance", "clocksource",
                                            "transparent_hugepage"}));
  const std::string text = FormatEnvCheck(EnvCheck(env));
  EXPECT_NE(text.find("8 settings lower the precision"), std::string::npos) << text;
  EXPECT_NE(text.find("fix: echo 1 | sudo tee /sys/devices/system/cpu/intel_pstate/no_turbo"),
            std::string::npos)
      << text;
}

TEST_F(FakeHostTest, HypervisorNamedBySysfsOrDmi) {
  Write("/sys/class/dmi/id/sys_vendor", "QEMU\n");
  EXPECT_EQ(Fingerprint()["virtualization"], "kvm");
  Write("/sys/hypervisor/type", "xen\n");
  EXPECT_EQ(Fingerprint()["virtualization"], "xen");
}

TEST(EnvLiveTest, ThisHostHasAFingerprint) {
  const nlohmann::json env = EnvFingerprint();
  for (const char* key : kKeys) EXPECT_TRUE(env.contains(key)) << key;
  EXPECT_TRUE(env["kernel"].is_string());
  EXPECT_TRUE(env["irqbalance"].is_boolean());
  if (env["io_uring"] == true) {
    ASSERT_TRUE(env["io_uring_ops"].is_array());
    // The ops every io_uring kernel has had since 5.1.
    EXPECT_EQ(env["io_uring_ops"][0], "nop");
  }
}

}  // namespace
}  // namespace upcase
