#include "server/hiccups.h"

#include <condition_variable>
#include <mutex>

#include "absl/strings/str_format.h"
#include "common/hiccup.h"
#include "common/sys.h"
#include "nlohmann/json.hpp"

namespace upcase {
namespace {

double Micros(std::int64_t ns) { return static_cast<double>(ns) / 1000.0; }

}  // namespace

absl::Status ServerHiccups::Start(const std::vector<int>& cpus) {
  cpus_ = cpus;
  // Each recorder reports its setup before recording; Start returns once all have.
  std::mutex mu;
  std::condition_variable cv;
  std::size_t ready = 0;
  for (int cpu : cpus) {
    auto r = std::make_unique<Recorder>();
    Recorder* rec = r.get();
    rec->thread = std::thread([this, rec, cpu, &mu, &cv, &ready] {
      HiccupTimer timer;
      const absl::Status setup = timer.SetUpThread(cpu);
      {
        // Notified under the lock: once `ready` is complete Start may return and end mu and cv.
        std::lock_guard<std::mutex> lock(mu);
        rec->setup = setup;
        ++ready;
        cv.notify_all();
      }
      if (!setup.ok()) return;
      std::int64_t woke = 0;
      while (!stop_.load(std::memory_order_relaxed)) rec->hiccups.Record(timer.Sleep(&woke));
    });
    recorders_.push_back(std::move(r));
  }
  absl::Status status;
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ready == recorders_.size(); });
    for (const auto& r : recorders_) {
      if (!r->setup.ok() && status.ok()) status = r->setup;
    }
  }
  if (!status.ok()) Stop();
  return status;
}

void ServerHiccups::Stop() {
  stop_.store(true, std::memory_order_relaxed);
  for (const auto& r : recorders_) {
    if (!r->thread.joinable()) continue;
    r->thread.join();
    total_.Add(r->hiccups);
  }
}

std::string ServerHiccups::Format() const {
  return absl::StrFormat(
      "hiccups: cpus=%s count=%d p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f",
      FormatCpuList(cpus_), total_.total_count(), Micros(total_.ValueAtPercentile(50)),
      Micros(total_.ValueAtPercentile(99)), Micros(total_.ValueAtPercentile(99.9)),
      Micros(total_.max()));
}

nlohmann::json ServerHiccups::ToJson() const {
  return {{"cpus", cpus_},
          {"p50", Micros(total_.ValueAtPercentile(50))},
          {"p99", Micros(total_.ValueAtPercentile(99))},
          {"p999", Micros(total_.ValueAtPercentile(99.9))},
          {"max", Micros(total_.max())},
          {"count", total_.total_count()}};
}

}  // namespace upcase
