// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#include "tools/trace_format.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace vm_device::trace {
namespace {

// The workspace name (WORKSPACE), the top directory of the runfiles tree.
constexpr char kWorkspaceName[] = "vm_device";

// Reads a plain or gzip'd text file line by line. Lines of any length.
class LineReader {
 public:
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;
  ~LineReader() {
    if (file_ != nullptr) gzclose(file_);
  }

  static absl::StatusOr<std::unique_ptr<LineReader>> Open(
      const std::string& path) {
    errno = 0;
    gzFile file = gzopen(path.c_str(), "rb");
    if (file == nullptr) {
      const int err = errno;
      const std::string why =
          err != 0 ? std::strerror(err) : std::string("cannot open");
      if (err == ENOENT) {
        return absl::NotFoundError(absl::StrCat(path, ": ", why));
      }
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
    }
    gzbuffer(file, 1 << 17);
    return std::unique_ptr<LineReader>(new LineReader(path, file));
  }

  // Reads the next line into `line_` without its end-of-line characters.
  // Returns false at the end of the file, and on a read error (see status()).
  bool Next() {
    line_.clear();
    bool got_any = false;
    for (;;) {
      if (gzgets(file_, buf_, sizeof(buf_)) == nullptr) {
        int errnum = Z_OK;
        const char* msg = gzerror(file_, &errnum);
        if (errnum != Z_OK && errnum != Z_BUF_ERROR) {
          status_ = absl::InvalidArgumentError(absl::StrCat(
              path_, ":", line_number_ + 1, ": read error: ", msg));
          return false;
        }
        if (!got_any) return false;
        break;  // a last line without a newline
      }
      got_any = true;
      const size_t n = std::strlen(buf_);
      if (n > 0 && buf_[n - 1] == '\n') {
        line_.append(buf_, n - 1);
        break;
      }
      line_.append(buf_, n);
    }
    ++line_number_;
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    return true;
  }

  const std::string& line() const { return line_; }
  int line_number() const { return line_number_; }
  const std::string& path() const { return path_; }
  const absl::Status& status() const { return status_; }

  // An error about the current line.
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ":", line_number_, ": ", what));
  }

 private:
  LineReader(std::string path, gzFile file)
      : path_(std::move(path)), file_(file) {}

  std::string path_;
  gzFile file_;
  char buf_[4096];
  std::string line_;
  int line_number_ = 0;
  absl::Status status_;
};

// Splits `line` at TABs into `fields` (at most kMaxFields of them, the rest
// counted but not stored); returns the number of fields. No allocation: the
// trace has hundreds of thousands of lines.
constexpr size_t kMaxFields = 8;
size_t SplitTabs(absl::string_view line,
                 absl::string_view (&fields)[kMaxFields]) {
  size_t n = 0;
  for (;;) {
    const size_t tab = line.find('\t');
    if (n < kMaxFields) fields[n] = line.substr(0, tab);
    ++n;
    if (tab == absl::string_view::npos) return n;
    line.remove_prefix(tab + 1);
  }
}

bool IsComment(const std::string& line) {
  return line.empty() || line[0] == '#';
}

// "0x" followed by 1 to 16 hex digits.
std::optional<uint64_t> ParseHex(absl::string_view s) {
  if (s.size() < 3 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) {
    return std::nullopt;
  }
  s.remove_prefix(2);
  // Leading zeros are fine; only significant digits count towards 64 bits.
  while (s.size() > 1 && s[0] == '0') s.remove_prefix(1);
  if (s.size() > 16) return std::nullopt;
  uint64_t v = 0;
  for (const char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return std::nullopt;
    }
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

// An optional '-' and 1 to 9 decimal digits.
std::optional<int64_t> ParseDecimal(absl::string_view s) {
  bool negative = false;
  if (!s.empty() && s[0] == '-') {
    negative = true;
    s.remove_prefix(1);
  }
  if (s.empty() || s.size() > 9) return std::nullopt;
  int64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return negative ? -v : v;
}

std::optional<BusKind> ParseBus(absl::string_view s) {
  if (s == "pio") return BusKind::kPio;
  if (s == "mmio") return BusKind::kMmio;
  return std::nullopt;
}

const char* BusName(BusKind bus) {
  return bus == BusKind::kPio ? "pio" : "mmio";
}

std::string Quote(absl::string_view s) { return absl::StrCat("'", s, "'"); }

// The ranges of `bus`, sorted by `first`.
std::vector<const MapRange*> SortedRanges(const DeviceMap& map, BusKind bus) {
  std::vector<const MapRange*> out;
  for (const MapRange& r : map.ranges) {
    if (r.bus == bus) out.push_back(&r);
  }
  std::sort(out.begin(), out.end(), [](const MapRange* a, const MapRange* b) {
    return a->first < b->first;
  });
  return out;
}

bool FileExists(const std::string& path) {
  return !path.empty() && access(path.c_str(), F_OK) == 0;
}

}  // namespace

RangeLookup::RangeLookup(const DeviceMap& map)
    : pio_(SortedRanges(map, BusKind::kPio)),
      mmio_(SortedRanges(map, BusKind::kMmio)) {}

const MapRange* RangeLookup::Find(BusKind bus, uint64_t addr) const {
  const std::vector<const MapRange*>& ranges =
      bus == BusKind::kPio ? pio_ : mmio_;
  // The last range starting at or below `addr`.
  auto it = std::upper_bound(
      ranges.begin(), ranges.end(), addr,
      [](uint64_t a, const MapRange* r) { return a < r->first; });
  if (it == ranges.begin()) return nullptr;
  const MapRange* r = *(it - 1);
  return addr <= r->last ? r : nullptr;
}

absl::StatusOr<DeviceMap> LoadDeviceMap(const std::string& path) {
  absl::StatusOr<std::unique_ptr<LineReader>> opened = LineReader::Open(path);
  if (!opened.ok()) return opened.status();
  LineReader& in = **opened;
  DeviceMap map;
  absl::flat_hash_map<std::string, int> name_index;
  while (in.Next()) {
    const std::string& line = in.line();
    if (IsComment(line)) continue;
    absl::string_view f[kMaxFields];
    const size_t fields = SplitTabs(line, f);
    if (fields != 4) {
      return in.Error(
          absl::StrCat("expected 4 TAB-separated fields (bus, "
                       "first, last, name), found ",
                       fields));
    }
    const std::optional<BusKind> bus = ParseBus(f[0]);
    if (!bus) {
      return in.Error(absl::StrCat("unknown bus ", Quote(f[0]),
                                   " (expected 'pio' or 'mmio')"));
    }
    const std::optional<uint64_t> first = ParseHex(f[1]);
    if (!first) {
      return in.Error(
          absl::StrCat("bad hex address ", Quote(f[1]), " in column 'first'"));
    }
    const std::optional<uint64_t> last = ParseHex(f[2]);
    if (!last) {
      return in.Error(
          absl::StrCat("bad hex address ", Quote(f[2]), " in column 'last'"));
    }
    if (*first > *last) {
      return in.Error(
          absl::StrCat("first ", f[1], " is greater than last ", f[2]));
    }
    if (*bus == BusKind::kPio && *last > 0xffff) {
      return in.Error(absl::StrCat("pio range ends at ", f[2],
                                   ", past the last port 0xffff"));
    }
    if (f[3].empty() || f[3] == "-") {
      return in.Error(absl::StrCat("bad device name ", Quote(f[3])));
    }
    std::string name(f[3]);
    if (name_index.emplace(name, static_cast<int>(map.names.size())).second) {
      map.names.push_back(name);
    }
    map.ranges.push_back(
        MapRange{*bus, *first, *last, std::move(name), in.line_number()});
  }
  if (!in.status().ok()) return in.status();

  // Ranges of one bus must be disjoint, as on a real bus.
  for (const BusKind bus : {BusKind::kPio, BusKind::kMmio}) {
    const std::vector<const MapRange*> sorted = SortedRanges(map, bus);
    for (size_t i = 1; i < sorted.size(); ++i) {
      const MapRange& a = *sorted[i - 1];
      const MapRange& b = *sorted[i];
      if (b.first <= a.last) {
        const MapRange& later = a.line > b.line ? a : b;
        const MapRange& earlier = a.line > b.line ? b : a;
        return absl::InvalidArgumentError(absl::StrCat(
            path, ":", later.line, ": ", BusName(bus), " range [0x",
            absl::Hex(later.first), ", 0x", absl::Hex(later.last), "] of ",
            Quote(later.name), " overlaps [0x", absl::Hex(earlier.first),
            ", 0x", absl::Hex(earlier.last), "] of ", Quote(earlier.name),
            " (line ", earlier.line, ")"));
      }
    }
  }
  return map;
}

namespace {

// A decimal byte count: 1 to 20 digits, no sign, at most 2^64 - 1.
std::optional<uint64_t> ParseSize(absl::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (~uint64_t{0} - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

// The ranges live at the current row of a trace, per bus: first -> index
// into ChangeTrace::ranges.
class LiveMap {
 public:
  explicit LiveMap(const ChangeTrace& t) : t_(t) {}

  void Add(int32_t range) {
    const MapRange& r = t_.ranges[range];
    bus(r.bus).emplace(r.first, range);
  }
  void Remove(int32_t range) {
    const MapRange& r = t_.ranges[range];
    bus(r.bus).erase(r.first);
  }

  // The live range holding `addr`, or -1.
  int32_t Find(BusKind b, uint64_t addr) const {
    const std::map<uint64_t, int32_t>& m = bus(b);
    auto it = m.upper_bound(addr);
    if (it == m.begin()) return -1;
    --it;
    return addr <= t_.ranges[it->second].last ? it->second : -1;
  }

  // A live range overlapping [first, last], or -1.
  int32_t FindOverlap(BusKind b, uint64_t first, uint64_t last) const {
    const std::map<uint64_t, int32_t>& m = bus(b);
    auto it = m.upper_bound(last);  // ranges starting at or below `last`
    if (it == m.begin()) return -1;
    --it;
    return t_.ranges[it->second].last >= first ? it->second : -1;
  }

  // The live range starting at `first`, or -1.
  int32_t AtFirst(BusKind b, uint64_t first) const {
    const std::map<uint64_t, int32_t>& m = bus(b);
    auto it = m.find(first);
    return it == m.end() ? -1 : it->second;
  }

 private:
  std::map<uint64_t, int32_t>& bus(BusKind b) {
    return b == BusKind::kPio ? pio_ : mmio_;
  }
  const std::map<uint64_t, int32_t>& bus(BusKind b) const {
    return b == BusKind::kPio ? pio_ : mmio_;
  }

  const ChangeTrace& t_;
  std::map<uint64_t, int32_t> pio_;
  std::map<uint64_t, int32_t> mmio_;
};

// Where a range came from, for messages: "line 5 of the map" or "mapped at
// line 1234".
std::string Origin(const ChangeTrace& t, int32_t range) {
  const MapRange& r = t.ranges[range];
  return static_cast<size_t>(range) < t.map_ranges
             ? absl::StrCat("line ", r.line, " of the map")
             : absl::StrCat("mapped at line ", r.line);
}

std::string Describe(const ChangeTrace& t, int32_t range) {
  const MapRange& r = t.ranges[range];
  return absl::StrCat("[0x", absl::Hex(r.first), ", 0x", absl::Hex(r.last),
                      "] of ", Quote(r.name), " (", Origin(t, range), ")");
}

// Parses change row `f` (7 fields, op `map` or `unmap`) and applies it to
// `t` and `live`.
absl::Status ParseChange(const LineReader& in, const absl::string_view* f,
                         bool map, size_t before,
                         absl::flat_hash_map<std::string, int32_t>& name_index,
                         LiveMap& live, ChangeTrace& t) {
  const char* op = map ? "map" : "unmap";
  if (f[0] != "-1") {
    return in.Error(absl::StrCat("a ", op, " row has vcpu ", Quote(f[0]),
                                 " (expected -1)"));
  }
  const std::optional<BusKind> bus = ParseBus(f[1]);
  if (!bus) {
    return in.Error(absl::StrCat("unknown bus ", Quote(f[1]),
                                 " (expected 'pio' or 'mmio')"));
  }
  const std::optional<uint64_t> first = ParseHex(f[3]);
  if (!first) return in.Error(absl::StrCat("bad hex address ", Quote(f[3])));
  const std::optional<uint64_t> size = ParseSize(f[4]);
  if (!size || *size == 0) {
    return in.Error(absl::StrCat("bad size ", Quote(f[4]), " in a ", op,
                                 " row (expected decimal bytes, at least 1)"));
  }
  const uint64_t top = *bus == BusKind::kPio ? 0xffff : ~uint64_t{0};
  if (*first > top || *size - 1 > top - *first) {
    return in.Error(absl::StrCat(BusName(*bus), " range at ", f[3], " of ",
                                 f[4], " bytes runs past the last address 0x",
                                 absl::Hex(top)));
  }
  if (f[5] != "-") {
    return in.Error(absl::StrCat("a ", op, " row has value ", Quote(f[5]),
                                 " (expected '-')"));
  }
  if (f[6].empty() || f[6] == "-") {
    return in.Error(
        absl::StrCat("bad device name ", Quote(f[6]), " in a ", op, " row"));
  }
  const uint64_t last = *first + (*size - 1);
  MapChange c{*bus, map, *first, *size, -1, -1, before, in.line_number()};
  if (map) {
    if (const int32_t o = live.FindOverlap(*bus, *first, last); o >= 0) {
      return in.Error(absl::StrCat(
          "map of ", BusName(*bus), " [", f[3], ", 0x", absl::Hex(last), "] ",
          Quote(f[6]), " overlaps the live range ", Describe(t, o)));
    }
    auto [it, added] = name_index.emplace(std::string(f[6]),
                                          static_cast<int32_t>(t.names.size()));
    if (added) t.names.emplace_back(f[6]);
    c.device = it->second;
    c.range = static_cast<int32_t>(t.ranges.size());
    t.ranges.push_back(
        MapRange{*bus, *first, last, std::string(f[6]), in.line_number()});
    live.Add(c.range);
  } else {
    const int32_t r = live.AtFirst(*bus, *first);
    if (r < 0 || t.ranges[r].last != last || t.ranges[r].name != f[6]) {
      const int32_t o = live.FindOverlap(*bus, *first, last);
      return in.Error(absl::StrCat(
          "unmap of ", BusName(*bus), " [", f[3], ", 0x", absl::Hex(last), "] ",
          Quote(f[6]), ": no such range is live",
          o < 0 ? std::string(" (nothing is mapped there)")
                : absl::StrCat(" (the live range there is ", Describe(t, o),
                               ")")));
    }
    c.device = name_index.at(t.ranges[r].name);
    c.range = r;
    live.Remove(r);
  }
  t.changes.push_back(c);
  return absl::OkStatus();
}

// Loads a trace; with `allow_changes` false, a change row is an error.
absl::StatusOr<ChangeTrace> Load(const std::string& path, const DeviceMap& map,
                                 bool allow_changes) {
  absl::StatusOr<std::unique_ptr<LineReader>> opened = LineReader::Open(path);
  if (!opened.ok()) return opened.status();
  LineReader& in = **opened;

  ChangeTrace t;
  t.names = map.names;
  t.ranges = map.ranges;
  t.map_ranges = map.ranges.size();
  absl::flat_hash_map<std::string, int32_t> name_index;
  for (size_t i = 0; i < t.names.size(); ++i) {
    name_index.emplace(t.names[i], static_cast<int32_t>(i));
  }
  LiveMap live(t);
  for (size_t i = 0; i < t.ranges.size(); ++i) {
    live.Add(static_cast<int32_t>(i));
  }

  while (in.Next()) {
    const std::string& line = in.line();
    if (IsComment(line)) continue;
    absl::string_view f[kMaxFields];
    const size_t fields = SplitTabs(line, f);
    if (fields != 7) {
      return in.Error(absl::StrCat(
          "expected 7 TAB-separated fields (vcpu, bus, op, addr, size, value, "
          "region), found ",
          fields));
    }
    if (f[2] == "map" || f[2] == "unmap") {
      if (!allow_changes) {
        return in.Error(absl::StrCat("a ", f[2],
                                     " row: this trace changes the map; load "
                                     "it with LoadChangeTrace()"));
      }
      absl::Status s = ParseChange(in, f, f[2] == "map", t.accesses.size(),
                                   name_index, live, t);
      if (!s.ok()) return s;
      continue;
    }
    Access a;
    const std::optional<int64_t> vcpu = ParseDecimal(f[0]);
    if (!vcpu || *vcpu < -1) {
      return in.Error(absl::StrCat("bad vcpu ", Quote(f[0]),
                                   " (expected -1 or a vCPU index)"));
    }
    a.vcpu = static_cast<int32_t>(*vcpu);
    const std::optional<BusKind> bus = ParseBus(f[1]);
    if (!bus) {
      return in.Error(absl::StrCat("unknown bus ", Quote(f[1]),
                                   " (expected 'pio' or 'mmio')"));
    }
    a.bus = *bus;
    if (f[2] == "r") {
      a.write = false;
    } else if (f[2] == "w") {
      a.write = true;
    } else {
      return in.Error(
          absl::StrCat("unknown op ", Quote(f[2]),
                       allow_changes ? " (expected 'r', 'w', 'map' or 'unmap')"
                                     : " (expected 'r' or 'w')"));
    }
    const std::optional<uint64_t> addr = ParseHex(f[3]);
    if (!addr) return in.Error(absl::StrCat("bad hex address ", Quote(f[3])));
    if (a.bus == BusKind::kPio && *addr > 0xffff) {
      return in.Error(
          absl::StrCat("pio address ", f[3], " is past the last port 0xffff"));
    }
    a.addr = *addr;
    const std::optional<int64_t> size = ParseDecimal(f[4]);
    if (!size || *size < 1 || *size > 8) {
      return in.Error(
          absl::StrCat("bad size ", Quote(f[4]), " (expected 1 to 8 bytes)"));
    }
    a.size = static_cast<uint8_t>(*size);
    const std::optional<uint64_t> value = ParseHex(f[5]);
    if (!value) return in.Error(absl::StrCat("bad hex value ", Quote(f[5])));
    a.value = *value;
    if (f[6] == "-") {
      a.device = -1;
    } else {
      auto it = name_index.find(f[6]);
      if (it == name_index.end()) {
        return in.Error(absl::StrCat("region ", Quote(f[6]),
                                     " is not a device of the map"));
      }
      const int32_t r = live.Find(a.bus, a.addr);
      if (r < 0 || t.ranges[r].name != f[6]) {
        return in.Error(absl::StrCat(
            "address ", f[3], " is not inside a ",
            t.changes.empty() ? "" : "live ", BusName(a.bus), " range of ",
            Quote(f[6]),
            r < 0 ? std::string(" (no range holds it)")
                  : absl::StrCat(" (it is in ", Quote(t.ranges[r].name), ", ",
                                 Origin(t, r), ")")));
      }
      a.device = it->second;
      a.range = r;
    }
    t.accesses.push_back(a);
  }
  if (!in.status().ok()) return in.status();
  return t;
}

}  // namespace

absl::StatusOr<std::vector<Access>> LoadTrace(const std::string& path,
                                              const DeviceMap& map) {
  absl::StatusOr<ChangeTrace> t = Load(path, map, /*allow_changes=*/false);
  if (!t.ok()) return t.status();
  // A fixed map: `range` would index DeviceMap::ranges; keep the documented
  // -1 so callers do not rely on it.
  for (Access& a : t->accesses) a.range = -1;
  return std::move(t->accesses);
}

absl::StatusOr<ChangeTrace> LoadChangeTrace(const std::string& path,
                                            const DeviceMap& map) {
  return Load(path, map, /*allow_changes=*/true);
}

std::vector<Burst> Bursts(const ChangeTrace& t) {
  std::vector<Burst> out;
  for (size_t i = 0; i < t.changes.size(); ++i) {
    if (!out.empty() && out.back().before == t.changes[i].before) {
      out.back().end = i + 1;
    } else {
      out.push_back(Burst{i, i + 1, t.changes[i].before});
    }
  }
  return out;
}

std::string ResolveDataPath(const std::string& workspace_relative_path) {
  const std::string& p = workspace_relative_path;
  if (p.empty() || p[0] == '/' || FileExists(p)) return p;
  std::vector<std::string> candidates;
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* dir = std::getenv(var); dir != nullptr && *dir != '\0') {
      candidates.push_back(absl::StrCat(dir, "/", kWorkspaceName, "/", p));
    }
  }
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    candidates.push_back(absl::StrCat(absl::string_view(exe, n), ".runfiles/",
                                      kWorkspaceName, "/", p));
  }
  // `bazel run`: the user's working directory, then the workspace root.
  for (const char* var :
       {"BUILD_WORKING_DIRECTORY", "BUILD_WORKSPACE_DIRECTORY"}) {
    if (const char* dir = std::getenv(var); dir != nullptr && *dir != '\0') {
      candidates.push_back(absl::StrCat(dir, "/", p));
    }
  }
  for (const std::string& c : candidates) {
    if (FileExists(c)) return c;
  }
  return p;
}

IoStatus Dispatch(const IoManager& manager, const Access& a, uint8_t* buf) {
  const absl::Span<uint8_t> data(buf, a.size);
  if (a.write) {
    for (size_t i = 0; i < a.size; ++i) {
      buf[i] = static_cast<uint8_t>(a.value >> (8 * i));
    }
    return a.bus == BusKind::kPio
               ? manager.PioWrite(PioAddress(static_cast<uint16_t>(a.addr)),
                                  data)
               : manager.MmioWrite(MmioAddress(a.addr), data);
  }
  return a.bus == BusKind::kPio
             ? manager.PioRead(PioAddress(static_cast<uint16_t>(a.addr)), data)
             : manager.MmioRead(MmioAddress(a.addr), data);
}

}  // namespace vm_device::trace
