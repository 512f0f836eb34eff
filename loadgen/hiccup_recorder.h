// upcase-load's hiccup recorders: one thread per load CPU that sleeps kHiccupPeriod over and over
// (common/hiccup.h) and records each oversleep inside the window into Stats::hiccups. It meets the
// main thread through the Coordinator exactly as a load thread does -- a lane of its own, its
// Stats handed over by a pointer swap at each interval boundary -- so the hiccups of an interval
// sit beside that interval's latency.
#ifndef UPCASE_LOADGEN_HICCUP_RECORDER_H_
#define UPCASE_LOADGEN_HICCUP_RECORDER_H_

#include <optional>

#include "loadgen/config.h"
#include "loadgen/coordinator.h"

namespace upcase::load {

// The thread body: sets up (pinned to `cpu` when given), waits for the start, records until the
// window ends (or a stop request), publishing every interval as lane `lane`.
void RunHiccupRecorder(const Config& config, int lane, std::optional<int> cpu,
                       Coordinator& coordinator);

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_HICCUP_RECORDER_H_
