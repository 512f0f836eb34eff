#include "server/shards.h"

#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace upcase {

absl::Status RunShards(std::size_t count, const std::function<absl::Status(std::size_t)>& run_shard,
                       const std::function<void()>& stop) {
  std::vector<absl::Status> results(count);
  auto run = [&](std::size_t i) {
    results[i] = run_shard(i);
    if (!results[i].ok()) stop();
  };
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < count; ++i) {
    try {
      threads.emplace_back(run, i);
    } catch (const std::system_error& e) {
      results[i] = absl::ResourceExhaustedError(
          absl::StrCat("cannot start thread for shard ", i, ": ", e.what()));
      stop();
      break;
    }
  }
  if (count > 0) run(0);
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace upcase
