// The open-loop schedule of one channel: when its requests are due, decided in advance and never
// moved by how fast replies come back.
//
// The total rate R is split evenly over the C channels of the run. Uniform arrivals: channel g
// sends every C/R seconds, offset by g/R so that the channels interleave and the run as a whole
// sends one request every 1/R seconds. Poisson arrivals: each channel draws exponential gaps
// with mean C/R; the sum of C independent Poisson processes is a Poisson process of rate R.
#ifndef UPCASE_LOADGEN_SCHEDULE_H_
#define UPCASE_LOADGEN_SCHEDULE_H_

#include <cmath>
#include <cstdint>

#include "loadgen/config.h"
#include "loadgen/payload.h"

namespace upcase::load {

class ArrivalSchedule {
 public:
  // `rate` is the channel's own requests/s; `phase` in [0, 1) its uniform offset in periods.
  ArrivalSchedule(Arrival arrival, double rate, std::int64_t start_ns, double phase)
      : arrival_(arrival), period_ns_(1e9 / rate), start_ns_(start_ns), phase_(phase) {}

  // The intended time of the channel's next request.
  std::int64_t Next(Rng& rng) {
    if (arrival_ == Arrival::kUniform) {
      // From the index rather than by accumulating, so rounding never drifts the rate.
      return At((phase_ + static_cast<double>(k_++)) * period_ns_);
    }
    poisson_ns_ += -std::log(rng.UnitOpenZero()) * period_ns_;
    return At(poisson_ns_);
  }

  // Beyond any run (146 years): where a rate so low that its period overflows puts requests.
  static constexpr std::int64_t kNeverNs = std::int64_t{1} << 62;

 private:
  // Also for an offset that is infinite or NaN (0 x an infinite period), which no cast may see.
  std::int64_t At(double offset_ns) const {
    return start_ns_ + (offset_ns < static_cast<double>(kNeverNs)
                            ? static_cast<std::int64_t>(offset_ns)
                            : kNeverNs);
  }

  Arrival arrival_;
  double period_ns_;
  std::int64_t start_ns_;
  double phase_;
  std::uint64_t k_ = 0;
  double poisson_ns_ = 0;
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_SCHEDULE_H_
