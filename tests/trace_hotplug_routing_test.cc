// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Replays a real guest's trace with its device-map changes
// (tests/data/qemu-q35-hotplug: BAR sizing at boot, a virtio-blk-pci
// hot-plugged and hot-unplugged while all vCPUs do disk I/O) against a live
// IoManager, one thread per vCPU, with tools/hotplug_replay.h:
//
//   * ordered: each access between the changes around it in the trace; it
//     must reach exactly the device object of the mapping holding its address
//     at its row (base, offset, data), or no device for '-' rows and accesses
//     running past their range's end.
//   * racing: the writer applies the bursts forward and backward, flat out,
//     while the threads replay; each access must reach a mapping published
//     at some moment of its dispatch, and "no device" only where no mapping
//     holding it was certainly published throughout.
//
// Both modes, both commit granularities (one IoBatch per burst, one call per
// change), and the devices' lifetimes: none destroyed while its handler ran,
// none leaked. Under --config=tsan the whole binary takes well under a minute
// on 2 cores.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "tools/hotplug_replay.h"
#include "tools/trace_format.h"

namespace vm_device {
namespace {

using trace::ChangeTrace;
using trace::CommitGranularity;
using trace::HotplugReplayOptions;
using trace::HotplugReplayResult;
using trace::ReplayMode;

constexpr char kMapPath[] = "tests/data/qemu-q35-hotplug/devices.tsv";
constexpr char kTracePath[] = "tests/data/qemu-q35-hotplug/trace.tsv.gz";

const ChangeTrace& TheTrace() {
  static const ChangeTrace* const t = [] {
    auto* out = new ChangeTrace;
    absl::StatusOr<trace::DeviceMap> map =
        trace::LoadDeviceMap(trace::ResolveDataPath(kMapPath));
    EXPECT_TRUE(map.ok()) << map.status();
    if (!map.ok()) return out;
    absl::StatusOr<ChangeTrace> loaded =
        trace::LoadChangeTrace(trace::ResolveDataPath(kTracePath), *map);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (loaded.ok()) *out = *std::move(loaded);
    return out;
  }();
  return *t;
}

void ExpectClean(const HotplugReplayResult& r) {
  EXPECT_EQ(r.misrouted, 0u);
  EXPECT_EQ(r.unexpected, 0u);
  EXPECT_EQ(r.writer_errors, 0u);
  EXPECT_EQ(r.destroyed_while_running, 0u);
  EXPECT_EQ(r.handler_on_dead_device, 0u);
  EXPECT_EQ(r.leaked, 0u);
  EXPECT_EQ(r.routed + r.no_device + r.unexpected + r.misrouted, r.accesses);
  for (const std::string& p : r.problems) ADD_FAILURE() << p;
}

HotplugReplayResult Replay(const ChangeTrace& t, ReplayMode mode,
                           CommitGranularity commit, int min_passes = 1) {
  HotplugReplayOptions o;
  o.mode = mode;
  o.commit = commit;
  o.min_passes = min_passes;
  absl::StatusOr<HotplugReplayResult> r =
      trace::ReplayWithChanges(t, trace::RowsPerVcpu(t.accesses), o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : HotplugReplayResult{};
}

class TraceHotplugRouting : public testing::TestWithParam<CommitGranularity> {};

TEST_P(TraceHotplugRouting, OrderedEveryAccessReachesTheMappingOfItsRow) {
  const ChangeTrace& t = TheTrace();
  ASSERT_EQ(t.accesses.size(), 410888u);
  ASSERT_EQ(t.changes.size(), 356u);
  const HotplugReplayResult r = Replay(t, ReplayMode::kOrdered, GetParam());
  ExpectClean(r);
  EXPECT_EQ(r.threads, 5u);  // vCPUs 0..3 and -1 (devices)
  // The data's README: 3,289 '-' rows, 26,933 accesses wider than their
  // range; every other access reaches its device.
  EXPECT_EQ(r.no_device_dash, 3289u);
  EXPECT_EQ(r.no_device_past_end, 26933u);
  EXPECT_EQ(r.routed, 410888u - 3289u - 26933u);
  EXPECT_EQ(r.changes, 356u);
  EXPECT_EQ(r.commits, GetParam() == CommitGranularity::kBurst ? 89u : 356u);
  // 51 ranges of the map, one device per map row (191).
  EXPECT_EQ(r.devices_built, 51u + 191u);
}

TEST_P(TraceHotplugRouting, RacingEveryAccessReachesARangeLiveDuringIt) {
  const ChangeTrace& t = TheTrace();
  ASSERT_FALSE(t.accesses.empty());
  const HotplugReplayResult r =
      Replay(t, ReplayMode::kRacing, GetParam(), /*min_passes=*/2);
  ExpectClean(r);
  EXPECT_GE(r.passes, 2u);  // forward, then backward at least once
  EXPECT_GE(r.changes, 2 * t.changes.size());
  EXPECT_GT(r.routed, 0u);
  EXPECT_GT(r.no_device, 0u);
  EXPECT_GE(r.overlapped, 1u);
}

INSTANTIATE_TEST_SUITE_P(
    Commit, TraceHotplugRouting,
    testing::Values(CommitGranularity::kBurst, CommitGranularity::kChange),
    [](const testing::TestParamInfo<CommitGranularity>& i) {
      return std::string(i.param == CommitGranularity::kBurst ? "PerBurst"
                                                              : "PerChange");
    });

// The first `accesses` accesses of `t` and the changes before them.
ChangeTrace Prefix(const ChangeTrace& t, size_t accesses) {
  ChangeTrace p = t;
  p.accesses.resize(accesses);
  while (!p.changes.empty() && p.changes.back().before > accesses) {
    p.changes.pop_back();
  }
  return p;
}

// The checks can fail: an access whose row is said to be in another mapping
// is counted as misrouted, with the access named. (On a prefix of the trace
// that ends soon after the first BAR was mapped, to stay quick under TSan.)
TEST(TraceHotplugRoutingChecks, OrderedCountsAnAccessSentElsewhere) {
  const ChangeTrace& full = TheTrace();
  ASSERT_FALSE(full.changes.empty());
  const size_t first_bar = full.changes[0].before;
  ChangeTrace t = Prefix(full, first_bar + 2000);
  // The first access to a range a map row mapped: claim it belongs to the
  // mapping of another access of the same bus that lies in a range of the
  // map file.
  size_t victim = t.accesses.size();
  for (size_t i = first_bar; i < t.accesses.size(); ++i) {
    if (t.accesses[i].range >= static_cast<int32_t>(t.map_ranges)) {
      victim = i;
      break;
    }
  }
  ASSERT_LT(victim, t.accesses.size());
  int32_t other = -1;
  for (const trace::Access& a : t.accesses) {
    if (a.bus == t.accesses[victim].bus && a.range >= 0 &&
        a.range < static_cast<int32_t>(t.map_ranges)) {
      other = a.range;
      break;
    }
  }
  ASSERT_GE(other, 0);
  t.accesses[victim].range = other;
  const HotplugReplayResult r =
      Replay(t, ReplayMode::kOrdered, CommitGranularity::kBurst);
  EXPECT_EQ(r.misrouted, 1u);
  EXPECT_EQ(r.unexpected, 0u);
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems[0].find("access " + std::to_string(victim)),
            std::string::npos)
      << r.problems[0];
  EXPECT_FALSE(r.ok());
}

// A change the manager refuses (a range mapped over a live one) is counted
// as a writer error, not hidden; the burst is not applied.
TEST(TraceHotplugRoutingChecks, WriterErrorsAreCounted) {
  const ChangeTrace& full = TheTrace();
  ASSERT_FALSE(full.changes.empty());
  ChangeTrace t = Prefix(full, full.changes[0].before + 100);
  ASSERT_TRUE(t.changes[0].map);
  // A second mapping of the first mapped range, in the same burst.
  trace::MapRange copy = t.ranges[t.changes[0].range];
  t.ranges.push_back(copy);
  trace::MapChange again = t.changes[0];
  again.range = static_cast<int32_t>(t.ranges.size() - 1);
  t.changes.insert(t.changes.begin() + 1, again);
  for (ReplayMode mode : {ReplayMode::kOrdered, ReplayMode::kRacing}) {
    const HotplugReplayResult r = Replay(t, mode, CommitGranularity::kBurst);
    EXPECT_GT(r.writer_errors, 0u);
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.destroyed_while_running, 0u);
    EXPECT_EQ(r.leaked, 0u);
    bool named = false;
    for (const std::string& p : r.problems) {
      named |= p.find("writer: ") != std::string::npos &&
               p.find("overlaps") != std::string::npos;
    }
    EXPECT_TRUE(named) << (r.problems.empty() ? "" : r.problems[0]);
  }
}

}  // namespace
}  // namespace vm_device
