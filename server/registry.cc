// The run-time backend registry. A new I/O model adds one line here.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "server/backend.h"

namespace upcase {

// Defined in each backend's file.
BackendInfo IterativeBackendInfo();
BackendInfo ThreadsBackendInfo();
BackendInfo ForkBackendInfo();
BackendInfo SelectBackendInfo();
BackendInfo PollBackendInfo();
BackendInfo SigioBackendInfo();
BackendInfo EpollBackendInfo();
#ifdef UPCASE_HAVE_URING
BackendInfo UringBackendInfo();
#else
// Built without liburing: the backend is listed, and says why it cannot run.
BackendInfo UringBackendInfo() {
  return {"uring",
          "multi-reactor: one io_uring per shard (not in this build)",
          /*sharded=*/true,
          /*reactor=*/true,
          [] {
            return absl::UnimplementedError(
                "this build has no liburing (install liburing-dev and rebuild)");
          },
          [](const ServerConfig&) -> std::unique_ptr<Backend> { return nullptr; }};
}
#endif

const std::vector<BackendInfo>& Backends() {
  static const std::vector<BackendInfo> backends = {
      IterativeBackendInfo(), ThreadsBackendInfo(), ForkBackendInfo(),  SelectBackendInfo(),
      PollBackendInfo(),      SigioBackendInfo(),   EpollBackendInfo(), UringBackendInfo(),
  };
  return backends;
}

absl::StatusOr<const BackendInfo*> FindBackend(absl::string_view name) {
  std::vector<absl::string_view> names;
  for (const BackendInfo& info : Backends()) {
    if (info.name == name) {
      if (absl::Status s = info.available(); !s.ok()) {
        return absl::Status(s.code(),
                            absl::StrCat("backend '", name, "' unavailable: ", s.message()));
      }
      return &info;
    }
    names.push_back(info.name);
  }
  return absl::NotFoundError(
      absl::StrCat("unknown backend '", name, "' (available: ", absl::StrJoin(names, ", "), ")"));
}

const BackendInfo& DefaultBackend(std::string* notice) {
  constexpr absl::string_view kPreference[] = {"uring", "epoll", "threads"};
  std::vector<std::string> skipped;
  for (absl::string_view name : kPreference) {
    for (const BackendInfo& info : Backends()) {
      if (info.name != name) continue;
      if (absl::Status s = info.available(); s.ok()) {
        if (notice != nullptr && !skipped.empty()) {
          *notice = absl::StrCat("using backend ", name, ": ", absl::StrJoin(skipped, "; "));
        }
        return info;
      } else {
        skipped.push_back(absl::StrCat(name, " unavailable (", s.message(), ")"));
      }
    }
  }
  return Backends().front();  // iterative needs nothing but sockets
}

}  // namespace upcase
