// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: trace_format.h
// -----------------------------------------------------------------------------
//
// Loads a recorded device map and access trace (the format of
// tests/data/qemu-q35-linux61/, described in its README.md) for the routing
// tests, the replay tool and the dispatch benchmark.
//
//   devices.tsv     `bus  first  last  name`, one row per range: `bus` is
//                   `pio` or `mmio`, `first` and `last` are inclusive hex
//                   addresses written with `0x`, `name` is the device (it may
//                   contain spaces; one name may own several ranges).
//   trace.tsv[.gz]  `vcpu  bus  op  addr  size  value  region`, one row per
//                   access: `vcpu` is a decimal vCPU index or -1 (a device,
//                   e.g. an MSI write), `op` is `r` or `w`, `addr` and
//                   `value` are hex with `0x`, `size` is 1..8 bytes,
//                   `region` is the name of the map range holding `addr`, or
//                   `-` where no device is mapped.
//
// Fields are separated by one TAB. Empty lines and lines starting with `#`
// are comments. The trace may be gzip-compressed or plain text (zlib reads
// both).
//
// Example:
//
//   namespace trace = vm_device::trace;
//   absl::StatusOr<trace::DeviceMap> map = trace::LoadDeviceMap(
//       trace::ResolveDataPath("tests/data/qemu-q35-linux61/devices.tsv"));
//   if (!map.ok()) return map.status();
//   absl::StatusOr<std::vector<trace::Access>> accesses = trace::LoadTrace(
//       trace::ResolveDataPath("tests/data/qemu-q35-linux61/trace.tsv.gz"),
//       *map);
//
// Errors: a file that cannot be opened is kNotFound; a malformed line is
// kInvalidArgument. Either message starts with `PATH:LINE: ` (the path as
// given, the 1-based line number), so that `devices.tsv:12: ...` points at
// the culprit.
//
// What the loader checks: the column count; the bus, op, hex and decimal
// syntax; `first <= last` (and `last <= 0xffff` on the PIO bus); that no two
// ranges of one bus overlap; `size` in 1..8; that a named region is a name of
// the map and that `addr` lies inside a range of that name on that bus. It
// does not check that the whole access `[addr, addr + size - 1]` fits inside
// that range: real traces contain accesses that run past a range's end (a
// 4-byte access to PCI port 0xcf8, whose flat range is one byte wide), which
// a dispatcher reports as "no device". Nor does it check that a `-` row lies
// outside every range: that is for the dispatcher under test to say. `value`
// is any 64-bit value (QEMU records some reads wider than their size).
//
// Map changes
// -----------
// A trace may also change the map as it goes (tests/data/qemu-q35-hotplug/:
// PCI BAR sizing, remapping, hotplug). A change row has the same 7 columns:
//
//   -1  bus  map|unmap  first  size  -  name
//
// `vcpu` is -1, `first` is hex with `0x`, `size` is the range's length in
// decimal bytes (1 or more, and the range may not pass the top of its bus),
// the `value` column is `-`, `name` is the range's device name (a new name or
// one the map or an earlier row used: names are not unique). `map` adds the
// range `[first, first + size - 1]` and must not overlap a range live at that
// row; `unmap` removes a live range with exactly that first, size and name.
// Rows apply in file order: an access row is checked against the ranges live
// at its own row. Load such a trace with LoadChangeTrace(); LoadTrace()
// refuses it (its callers assume a fixed map).
//
// Example:
//
//   absl::StatusOr<trace::ChangeTrace> t = trace::LoadChangeTrace(
//       trace::ResolveDataPath("tests/data/qemu-q35-hotplug/trace.tsv.gz"),
//       *map);
//   for (const trace::Burst& b : trace::Bursts(*t)) { ... }
//
// Thread safety: the functions are reentrant; the results are plain values.

#ifndef VM_DEVICE_TOOLS_TRACE_FORMAT_H_
#define VM_DEVICE_TOOLS_TRACE_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vm_device/io_manager.h"
#include "vm_device/io_status.h"

namespace vm_device::trace {

// BusKind
//
// The address space of a range or an access.
enum class BusKind : uint8_t { kPio, kMmio };

// MapRange
//
// One row of devices.tsv: the inclusive range [first, last] of `bus` that the
// device `name` owns; `line` is its line number in the file.
struct MapRange {
  BusKind bus;
  uint64_t first;
  uint64_t last;
  std::string name;
  int line;
};

// DeviceMap
//
// Every range of the map in file order, and the distinct device names in the
// order they first appear. `Access::device` indexes `names`.
struct DeviceMap {
  std::vector<MapRange> ranges;
  std::vector<std::string> names;  // distinct names, first-seen order
};

// Access
//
// One row of the trace.
struct Access {
  int32_t vcpu;  // -1 = a device (MSI)
  BusKind bus;
  bool write;
  uint8_t size;  // 1..8 bytes as recorded
  uint64_t addr;
  uint64_t value;
  int32_t device;  // index into DeviceMap::names, or -1 for '-' (no device)
  // LoadChangeTrace() only: index into ChangeTrace::ranges of the range live
  // at this row holding `addr` (the one `device` names), or -1 for '-'.
  int32_t range = -1;
};

// MapChange
//
// One change row of a trace (see "Map changes" above).
struct MapChange {
  BusKind bus;
  bool map;        // true: map, false: unmap
  uint64_t first;  // the range [first, first + size - 1]
  uint64_t size;   // >= 1
  int32_t device;  // index into ChangeTrace::names
  int32_t range;   // index into ChangeTrace::ranges: the range added/removed
  size_t before;   // the number of access rows before this row
  int line;        // line number in the trace file
};

// ChangeTrace
//
// A trace with map changes, as LoadChangeTrace() returns it.
struct ChangeTrace {
  // The map's names, then names first used by change rows.
  std::vector<std::string> names;
  // Every range that is live at some row: the map's ranges first (index i is
  // DeviceMap::ranges[i]), then one per `map` row, in file order (its
  // `line` is the trace line). Two entries may have the same bounds and name:
  // they are two mappings (a BAR unmapped and mapped again).
  std::vector<MapRange> ranges;
  // How many of `ranges` come from the map file.
  size_t map_ranges = 0;
  std::vector<Access> accesses;
  std::vector<MapChange> changes;  // in file order
};

// Burst
//
// A maximal run of change rows with no access row between them: changes
// [begin, end) of ChangeTrace::changes, all applied after access row
// `before - 1` and before access row `before`.
struct Burst {
  size_t begin;
  size_t end;
  size_t before;
};

// Bursts()
//
// The bursts of `t`, in order.
std::vector<Burst> Bursts(const ChangeTrace& t);

// RangeLookup
//
// Finds the map range holding an address (binary search over each bus's
// ranges sorted by `first`). Keeps pointers into the map it was built from:
// the map must outlive it and not change. For a map with overlapping ranges
// (LoadDeviceMap() refuses those) the answer is one of the candidates.
class RangeLookup {
 public:
  explicit RangeLookup(const DeviceMap& map);

  // RangeLookup::Find()
  //
  // The range of `bus` holding `addr`, or null when no range does.
  const MapRange* Find(BusKind bus, uint64_t addr) const;

 private:
  std::vector<const MapRange*> pio_;   // sorted by first
  std::vector<const MapRange*> mmio_;  // sorted by first
};

// LoadDeviceMap()
//
// Reads a devices.tsv file (plain or gzip'd).
absl::StatusOr<DeviceMap> LoadDeviceMap(const std::string& path);

// LoadTrace()
//
// Reads a trace file (plain or gzip'd) whose region names refer to `map`.
// A change row is an error (kInvalidArgument naming its line): use
// LoadChangeTrace().
absl::StatusOr<std::vector<Access>> LoadTrace(const std::string& path,
                                              const DeviceMap& map);

// LoadChangeTrace()
//
// Reads a trace file (plain or gzip'd) that may contain change rows, whose
// ranges and names start from `map`. Checks every row against the ranges
// live at that row.
absl::StatusOr<ChangeTrace> LoadChangeTrace(const std::string& path,
                                            const DeviceMap& map);

// ResolveDataPath()
//
// Resolves a path given relative to the workspace root. Under `bazel test` or
// `bazel run` it looks in the runfiles tree ($TEST_SRCDIR/vm_device/...,
// $RUNFILES_DIR/vm_device/..., or the binary's own `.runfiles` directory),
// then, for `bazel run`, in $BUILD_WORKSPACE_DIRECTORY. Returns the first
// candidate that exists, or `workspace_relative_path` unchanged (also when it
// is absolute or exists as given).
std::string ResolveDataPath(const std::string& workspace_relative_path);

// Dispatch()
//
// Performs the recorded access `a` on `manager`: a write of `a.size` bytes of
// `a.value` (little-endian) or a read of `a.size` bytes, through `buf` (at
// least `a.size` bytes). Returns what the manager answered.
IoStatus Dispatch(const IoManager& manager, const Access& a, uint8_t* buf);

}  // namespace vm_device::trace

#endif  // VM_DEVICE_TOOLS_TRACE_FORMAT_H_
