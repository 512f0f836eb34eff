// A whole run: check the server is there, start the threads, wait for --start-at, print a
// progress line per interval (and log it with --hdr-log), join, and sum up.
#ifndef UPCASE_LOADGEN_RUN_H_
#define UPCASE_LOADGEN_RUN_H_

#include "absl/status/statusor.h"
#include "loadgen/config.h"
#include "loadgen/report.h"

namespace upcase::load {

// Runs the load `config` describes. Progress lines go to stderr unless config.quiet. An error
// means the run could not start (unreachable server, too few file descriptors, bad --cpus ...).
absl::StatusOr<Report> RunLoad(const Config& config);

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_RUN_H_
