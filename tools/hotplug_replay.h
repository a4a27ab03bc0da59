// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: tools/hotplug_replay.h
// -----------------------------------------------------------------------------
//
// Replays a trace that changes the device map (trace_format.h, "Map changes")
// against a live IoManager: vCPU threads dispatch the recorded accesses while
// a writer thread applies the recorded map/unmap rows. Used by //tools:replay
// and tests/trace_hotplug_routing_test.cc.
//
// Devices. Every mapping (a range of the map file, or one `map` row) gets a
// device object of its own, built when the writer maps it and dropped by the
// writer when it unmaps it (from then on only the manager holds it, until
// the grace period passes). So "the device object whose range held the
// address" is exact even though names repeat: a BAR that is unmapped and
// mapped again is a new object, and two devices with the same name are two
// objects. Each object knows its mapping and a serial number; its handlers
// record (mapping, serial, base, offset, bus, length) for the calling thread,
// answer reads with its serial, count handler entries and exits, and its
// destructor counts a handler still running ("destroyed while running").
//
// Modes
// -----
// kOrdered: the accesses are cut at the bursts (trace_format.h, Bursts()).
//   All threads replay the accesses before burst 0 (each its own rows, in
//   order, concurrently), meet at a barrier, the writer applies burst 0
//   (one IoBatch, or one call per change), a barrier releases the threads
//   into the next stretch, and so on. So every access is dispatched after
//   every change before it in the trace and before every change after it,
//   and must reach exactly the device object of the mapping holding its
//   address at that row (the loader's `Access::range`), at that mapping's
//   base and the right offset, with the data that object answers. An access
//   with no mapping (`-`), or running past its mapping's end, must find no
//   device.
// kRacing: the threads replay their rows flat out, with no barrier, while the
//   writer applies the bursts at its own pace: forward through the trace,
//   then backward (undoing each burst: unmap what was mapped, map what was
//   unmapped), forward again, ... until every thread has finished and at
//   least `min_passes` passes are complete. The check is the stress test's
//   (tests/hotplug_harness.h): the writer stamps every mapping's start,
//   publish-done, unmap-begin and end from one seq_cst counter; each access
//   loads it before (t0) and after (t1) its dispatch. A routed access is
//   correct iff it reached a device object whose mapping holds the whole
//   access at the right base and offset, and that mapping began before t1
//   and had not ended before t0 (published at some moment of the dispatch).
//   "No device" is correct iff no mapping holding the whole access was
//   certainly published during all of [t0, t1). The checks run after the
//   threads have joined, from what each access recorded.
//
// Both modes report nanoseconds per access (wall time of the replay phase,
// all threads, over the accesses; in racing mode this includes two clock
// loads and two steady_clock reads per access). Racing mode also reports the
// dispatch latency (steady_clock around the dispatch) of the accesses that
// overlapped a commit, p50 and p99, next to those of all accesses.
//
// Thread safety: ReplayWithChanges() is reentrant; it starts and joins its
// own threads.

#ifndef VM_DEVICE_TOOLS_HOTPLUG_REPLAY_H_
#define VM_DEVICE_TOOLS_HOTPLUG_REPLAY_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tools/trace_format.h"

namespace vm_device::trace {

enum class ReplayMode { kOrdered, kRacing };

// How the writer applies a burst: one IoManager::Commit per burst, or one
// Register/Deregister call per change row.
enum class CommitGranularity { kBurst, kChange };

struct HotplugReplayOptions {
  ReplayMode mode = ReplayMode::kOrdered;
  CommitGranularity commit = CommitGranularity::kBurst;
  // Racing: the writer sleeps this long after each commit (0: flat out).
  int64_t change_interval_us = 0;
  // Racing: complete passes over the changes the writer makes at least, even
  // if the threads finish first (a pass is forward or backward).
  int min_passes = 1;
};

struct HotplugReplayResult {
  size_t accesses = 0;
  size_t threads = 0;
  // Reached the right device object: in ordered mode the mapping of the
  // access's row; in racing mode a mapping that held the whole access at
  // some moment of the dispatch.
  uint64_t routed = 0;
  // kDeviceNotFound, correctly. Ordered mode says why it was expected.
  uint64_t no_device = 0;
  uint64_t no_device_dash = 0;      // ordered: '-' rows
  uint64_t no_device_past_end = 0;  // ordered: running past the range's end
  // kDeviceNotFound (or another error) where a mapping held the whole access
  // (ordered), or certainly held it throughout the dispatch (racing).
  uint64_t unexpected = 0;
  // Reached another device object, base or offset, or a device where none
  // may be, or wrong data.
  uint64_t misrouted = 0;

  // The writer.
  uint64_t commits = 0;  // publishing calls, initial map excluded
  uint64_t changes = 0;  // change rows applied
  uint64_t passes = 0;   // racing: complete passes over the changes
  uint64_t writer_errors = 0;

  // Device lifetimes.
  uint64_t devices_built = 0;
  uint64_t destroyed_while_running = 0;  // destructor ran inside a handler
  uint64_t handler_on_dead_device = 0;   // a handler ran on a destroyed one
  uint64_t leaked = 0;  // not destroyed once the manager was destroyed

  double ns_per_access = 0;
  // Racing: dispatch latency, ns.
  uint64_t overlapped = 0;  // accesses that overlapped a commit
  double overlapped_p50_ns = 0;
  double overlapped_p99_ns = 0;
  double all_p50_ns = 0;
  double all_p99_ns = 0;

  std::vector<std::string> problems;  // the first few, one line each

  // Nothing misrouted, unexpected, failed, destroyed early or leaked.
  bool ok() const {
    return misrouted == 0 && unexpected == 0 && writer_errors == 0 &&
           destroyed_while_running == 0 && handler_on_dead_device == 0 &&
           leaked == 0;
  }
};

// RowsPerVcpu(), RowsRoundRobin()
//
// Access rows per replay thread: one thread per vCPU value (in increasing
// vCPU order, -1 first), or row i on thread i % threads. Rows in trace order.
std::vector<std::vector<size_t>> RowsPerVcpu(const std::vector<Access>& a);
std::vector<std::vector<size_t>> RowsRoundRobin(size_t accesses, int threads);

// ReplayWithChanges()
//
// Builds an IoManager with the map of `t` (its first `map_ranges` ranges),
// replays the accesses, one thread per entry of `rows`, and the changes as
// `options` says, then destroys the manager and counts the devices left.
// Errors (kInvalidArgument) only when the initial map cannot be registered;
// everything that goes wrong during the replay is counted in the result.
absl::StatusOr<HotplugReplayResult> ReplayWithChanges(
    const ChangeTrace& t, absl::Span<const std::vector<size_t>> rows,
    const HotplugReplayOptions& options);

}  // namespace vm_device::trace

#endif  // VM_DEVICE_TOOLS_HOTPLUG_REPLAY_H_
