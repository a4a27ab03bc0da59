// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#include "tools/trace_format.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vm_device {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using trace::Access;
using trace::BusKind;
using trace::DeviceMap;
using trace::LoadDeviceMap;
using trace::LoadTrace;
using trace::MapRange;

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

// Writes `contents` to a fresh file under $TEST_TMPDIR; gzip'd if `gzip`.
std::string WriteFile(absl::string_view name, absl::string_view contents,
                      bool gzip = false) {
  const std::string path = absl::StrCat(TempDir(), "/", name);
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(
        gzwrite(f, contents.data(), static_cast<unsigned>(contents.size())),
        static_cast<int>(contents.size()));
    EXPECT_EQ(gzclose(f), Z_OK);
  } else {
    FILE* f = std::fopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(std::fwrite(contents.data(), 1, contents.size(), f),
              contents.size());
    EXPECT_EQ(std::fclose(f), 0);
  }
  return path;
}

constexpr char kMap[] =
    "# a comment\n"
    "# bus\tfirst\tlast\tname\n"
    "pio\t0x20\t0x21\tpic\n"
    "\n"
    "pio\t0x3f8\t0x3ff\tserial\n"
    "pio\t0xa0\t0xa1\tpic\n"
    "mmio\t0xfebd4400\t0xfebd441f\tvga ioports remapped\n"
    "mmio\t0xFED00000\t0xfed003ff\thpet\r\n"  // CRLF and upper-case hex
    "pio\t0xfff0\t0xffff\ttop\n";

DeviceMap LoadGoodMap() {
  absl::StatusOr<DeviceMap> map = LoadDeviceMap(WriteFile("good.tsv", kMap));
  EXPECT_TRUE(map.ok()) << map.status();
  return map.ok() ? *map : DeviceMap{};
}

TEST(TraceFormat, LoadsADeviceMap) {
  const DeviceMap map = LoadGoodMap();
  EXPECT_THAT(map.names, ElementsAre("pic", "serial", "vga ioports remapped",
                                     "hpet", "top"));
  ASSERT_EQ(map.ranges.size(), 6u);
  const MapRange& pic2 = map.ranges[2];
  EXPECT_EQ(pic2.bus, BusKind::kPio);
  EXPECT_EQ(pic2.first, 0xa0u);
  EXPECT_EQ(pic2.last, 0xa1u);
  EXPECT_EQ(pic2.name, "pic");
  EXPECT_EQ(pic2.line, 6);
  const MapRange& vga = map.ranges[3];
  EXPECT_EQ(vga.bus, BusKind::kMmio);
  EXPECT_EQ(vga.first, 0xfebd4400u);
  EXPECT_EQ(vga.last, 0xfebd441fu);
  EXPECT_EQ(vga.name, "vga ioports remapped");
  EXPECT_EQ(map.ranges[4].first, 0xfed00000u);
  EXPECT_EQ(map.ranges[4].name, "hpet");
  EXPECT_EQ(map.ranges[5].last, 0xffffu);
}

TEST(TraceFormat, RangeLookupFindsTheRangeHoldingAnAddress) {
  const DeviceMap map = LoadGoodMap();
  const trace::RangeLookup lookup(map);
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0x1f), nullptr);
  ASSERT_NE(lookup.Find(BusKind::kPio, 0x20), nullptr);
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0x20)->line, 3);
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0x21)->line, 3);
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0x22), nullptr);
  ASSERT_NE(lookup.Find(BusKind::kPio, 0xa1), nullptr);
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0xa1)->first, 0xa0u);
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0x3ff)->name, "serial");
  EXPECT_EQ(lookup.Find(BusKind::kPio, 0xffff)->name, "top");
  // The same number on the other bus.
  EXPECT_EQ(lookup.Find(BusKind::kMmio, 0x20), nullptr);
  EXPECT_EQ(lookup.Find(BusKind::kMmio, 0xfed00000)->name, "hpet");
  EXPECT_EQ(lookup.Find(BusKind::kMmio, 0xfed00400), nullptr);
  EXPECT_EQ(lookup.Find(BusKind::kMmio, 0xfebd441f)->name,
            "vga ioports remapped");
  EXPECT_EQ(lookup.Find(BusKind::kMmio, 0xffffffffffffffff), nullptr);
}

TEST(TraceFormat, LoadsAGzippedMap) {
  absl::StatusOr<DeviceMap> map =
      LoadDeviceMap(WriteFile("good.tsv.gz", kMap, /*gzip=*/true));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->ranges.size(), 6u);
  EXPECT_EQ(map->names.size(), 5u);
}

constexpr char kTrace[] =
    "# vcpu\tbus\top\taddr\tsize\tvalue\tregion\n"
    "0\tpio\tw\t0x21\t1\t0xff\tpic\n"
    "3\tpio\tr\t0xa0\t2\t0x0\tpic\n"
    "-1\tmmio\tw\t0xfebd4410\t4\t0xdeadbeef\tvga ioports remapped\n"
    "1\tpio\tw\t0x402\t1\t0x53\t-\n"
    "\n"
    "# a comment in the middle\n"
    "2\tmmio\tr\t0xfed003fc\t8\t0xffffffffffffffff\thpet\n"
    "12\tpio\tr\t0x3ff\t4\t0x1\tserial";  // no final newline

void ExpectGoodTrace(const std::vector<Access>& t) {
  ASSERT_EQ(t.size(), 6u);
  EXPECT_EQ(t[0].vcpu, 0);
  EXPECT_EQ(t[0].bus, BusKind::kPio);
  EXPECT_TRUE(t[0].write);
  EXPECT_EQ(t[0].size, 1);
  EXPECT_EQ(t[0].addr, 0x21u);
  EXPECT_EQ(t[0].value, 0xffu);
  EXPECT_EQ(t[0].device, 0);  // pic
  EXPECT_EQ(t[1].vcpu, 3);
  EXPECT_FALSE(t[1].write);
  EXPECT_EQ(t[1].size, 2);
  EXPECT_EQ(t[1].device, 0);  // pic, its second range
  EXPECT_EQ(t[2].vcpu, -1);
  EXPECT_EQ(t[2].bus, BusKind::kMmio);
  EXPECT_EQ(t[2].value, 0xdeadbeefu);
  EXPECT_EQ(t[2].device, 2);  // a name with spaces
  EXPECT_EQ(t[3].device, -1);
  EXPECT_EQ(t[3].addr, 0x402u);
  EXPECT_EQ(t[4].size, 8);
  EXPECT_EQ(t[4].value, 0xffffffffffffffffu);
  EXPECT_EQ(t[4].device, 3);  // hpet
  EXPECT_EQ(t[5].vcpu, 12);
  EXPECT_EQ(t[5].device, 1);  // serial; the access runs past the range end
  EXPECT_EQ(t[5].size, 4);
}

TEST(TraceFormat, LoadsAPlainTrace) {
  const DeviceMap map = LoadGoodMap();
  absl::StatusOr<std::vector<Access>> t =
      LoadTrace(WriteFile("plain.tsv", kTrace), map);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectGoodTrace(*t);
}

TEST(TraceFormat, LoadsAGzippedTrace) {
  const DeviceMap map = LoadGoodMap();
  absl::StatusOr<std::vector<Access>> t =
      LoadTrace(WriteFile("trace.tsv.gz", kTrace, /*gzip=*/true), map);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectGoodTrace(*t);
}

TEST(TraceFormat, ReadsLinesLongerThanItsBuffer) {
  const std::string name(10000, 'n');
  const std::string map_text =
      absl::StrCat("mmio\t0x1000\t0x1fff\t", name, "\n");
  absl::StatusOr<DeviceMap> map =
      LoadDeviceMap(WriteFile("long.tsv", map_text));
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_EQ(map->names.size(), 1u);
  EXPECT_EQ(map->names[0], name);
  absl::StatusOr<std::vector<Access>> t = LoadTrace(
      WriteFile("long_trace.tsv",
                absl::StrCat("0\tmmio\tr\t0x1004\t4\t0x0\t", name, "\n",
                             "1\tmmio\tw\t0x1ffc\t4\t0x1\t", name, "\n")),
      *map);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[1].addr, 0x1ffcu);
  EXPECT_EQ((*t)[1].vcpu, 1);
}

TEST(TraceFormat, EmptyFilesLoadEmpty) {
  absl::StatusOr<DeviceMap> map =
      LoadDeviceMap(WriteFile("empty.tsv", "# nothing\n"));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(map->ranges.empty());
  EXPECT_TRUE(map->names.empty());
  absl::StatusOr<std::vector<Access>> t =
      LoadTrace(WriteFile("empty_trace.tsv", ""), *map);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->empty());
}

TEST(TraceFormat, MissingFileIsNotFoundNamingThePath) {
  const std::string path = absl::StrCat(TempDir(), "/no-such-devices.tsv");
  absl::StatusOr<DeviceMap> map = LoadDeviceMap(path);
  EXPECT_EQ(map.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(map.status().message(), HasSubstr(path));
  absl::StatusOr<std::vector<Access>> t =
      LoadTrace(absl::StrCat(TempDir(), "/no-such-trace.tsv.gz"), DeviceMap{});
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr("no-such-trace.tsv.gz"));
}

struct BadLine {
  const char* line;  // the bad line, written as line 3 after two good ones
  const char* why;   // expected in the message after "FILE:3: "
};

TEST(TraceFormat, BadMapLinesNameFileAndLine) {
  const BadLine cases[] = {
      {"pio\t0x0\t0x7", "expected 4 TAB-separated fields"},
      {"pio\t0x0\t0x7\tdma\textra", "expected 4 TAB-separated fields"},
      {"pio 0x0 0x7 dma", "expected 4 TAB-separated fields"},
      {"isa\t0x0\t0x7\tdma", "unknown bus 'isa'"},
      {"PIO\t0x0\t0x7\tdma", "unknown bus 'PIO'"},
      {"pio\t0\t0x7\tdma", "bad hex address '0'"},
      {"pio\t0x\t0x7\tdma", "bad hex address '0x'"},
      {"pio\t0x0\t0x7g\tdma", "bad hex address '0x7g'"},
      {"pio\t 0x0\t0x7\tdma", "bad hex address ' 0x0'"},
      {"mmio\t0x0\t0x10000000000000000\tbig", "bad hex address"},
      {"pio\t0x8\t0x7\tdma", "first 0x8 is greater than last 0x7"},
      {"pio\t0xfff0\t0x10000\tdma", "past the last port 0xffff"},
      {"pio\t0x0\t0x7\t", "bad device name ''"},
      {"pio\t0x0\t0x7\t-", "bad device name '-'"},
      {"pio\t0x21\t0x22\tclash", "overlaps [0x20, 0x21] of 'pic' (line 1)"},
      {"mmio\t0x0\t0xffffffffffffffff\tall", "overlaps [0x1000, 0x1fff]"},
  };
  for (const BadLine& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string path =
        WriteFile("bad_map.tsv", absl::StrCat("pio\t0x20\t0x21\tpic\n"
                                              "mmio\t0x1000\t0x1fff\tram-ish\n",
                                              c.line, "\n"));
    absl::StatusOr<DeviceMap> map = LoadDeviceMap(path);
    ASSERT_FALSE(map.ok());
    EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(map.status().message(), HasSubstr(absl::StrCat(path, ":3: ")));
    EXPECT_THAT(map.status().message(), HasSubstr(c.why));
  }
}

TEST(TraceFormat, BadTraceLinesNameFileAndLine) {
  const DeviceMap map = LoadGoodMap();
  const BadLine cases[] = {
      {"0\tpio\tw\t0x21\t1\t0xff", "expected 7 TAB-separated fields"},
      {"0\tpio\tw\t0x21\t1\t0xff\tpic\tx", "expected 7 TAB-separated fields"},
      {"", nullptr},  // an empty line is a comment: the file is good
      {"x\tpio\tw\t0x21\t1\t0xff\tpic", "bad vcpu 'x'"},
      {"-2\tpio\tw\t0x21\t1\t0xff\tpic", "bad vcpu '-2'"},
      {"\tpio\tw\t0x21\t1\t0xff\tpic", "bad vcpu ''"},
      {"0\tisa\tw\t0x21\t1\t0xff\tpic", "unknown bus 'isa'"},
      {"0\tpio\tx\t0x21\t1\t0xff\tpic", "unknown op 'x'"},
      {"0\tpio\tread\t0x21\t1\t0xff\tpic", "unknown op 'read'"},
      {"0\tpio\tw\t21\t1\t0xff\tpic", "bad hex address '21'"},
      {"0\tpio\tw\t0xzz\t1\t0xff\tpic", "bad hex address '0xzz'"},
      {"0\tpio\tw\t0x10000\t1\t0xff\t-", "past the last port 0xffff"},
      {"0\tpio\tw\t0x21\t0\t0xff\tpic", "bad size '0'"},
      {"0\tpio\tw\t0x21\t9\t0xff\tpic", "bad size '9'"},
      {"0\tpio\tw\t0x21\t0x1\t0xff\tpic", "bad size '0x1'"},
      {"0\tpio\tw\t0x21\t1\tff\tpic", "bad hex value 'ff'"},
      {"0\tpio\tw\t0x21\t1\t0x1ffffffffffffffff\tpic", "bad hex value"},
      {"0\tpio\tw\t0x21\t1\t0xff\tpit", "region 'pit' is not a device"},
      {"0\tpio\tw\t0x22\t1\t0xff\tpic",
       "address 0x22 is not inside a pio range of 'pic' (no range holds it)"},
      {"0\tpio\tw\t0x3f8\t1\t0xff\tpic",
       "(it is in 'serial', line 5 of the map)"},
      {"0\tmmio\tw\t0x21\t1\t0xff\tpic", "not inside a mmio range of 'pic'"},
  };
  for (const BadLine& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string path = WriteFile(
        "bad_trace.tsv", absl::StrCat("# header\n"
                                      "0\tpio\tw\t0x20\t1\t0x11\tpic\n",
                                      c.line, "\n"));
    absl::StatusOr<std::vector<Access>> t = LoadTrace(path, map);
    if (c.why == nullptr) {
      EXPECT_TRUE(t.ok()) << t.status();
      continue;
    }
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(absl::StrCat(path, ":3: ")));
    EXPECT_THAT(t.status().message(), HasSubstr(c.why));
  }
}

TEST(TraceFormat, CorruptGzipIsAnError) {
  // A gzip header followed by garbage: zlib reports a data error.
  std::string bytes = "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03";
  bytes += std::string(64, '\xff');
  const std::string path = WriteFile("corrupt.tsv.gz", bytes);
  absl::StatusOr<DeviceMap> map = LoadDeviceMap(path);
  ASSERT_FALSE(map.ok());
  EXPECT_THAT(map.status().message(), HasSubstr(path));
  EXPECT_THAT(map.status().message(), HasSubstr("read error"));
}

TEST(TraceFormat, ResolveDataPathLooksInTheRunfilesTree) {
  const std::string root = absl::StrCat(TempDir(), "/fake_runfiles");
  ASSERT_EQ(std::system(
                absl::StrCat("mkdir -p ", root, "/vm_device/some/dir").c_str()),
            0);
  const std::string file =
      WriteFile("fake_runfiles/vm_device/some/dir/f.tsv", "");
  const char* old = std::getenv("TEST_SRCDIR");
  const std::string saved = old != nullptr ? old : "";
  ASSERT_EQ(setenv("TEST_SRCDIR", root.c_str(), 1), 0);
  EXPECT_EQ(trace::ResolveDataPath("some/dir/f.tsv"), file);
  // Not found anywhere: unchanged.
  EXPECT_EQ(trace::ResolveDataPath("some/dir/nope.tsv"), "some/dir/nope.tsv");
  // Absolute: unchanged.
  EXPECT_EQ(trace::ResolveDataPath("/no/such/file"), "/no/such/file");
  if (old != nullptr) {
    setenv("TEST_SRCDIR", saved.c_str(), 1);
  } else {
    unsetenv("TEST_SRCDIR");
  }
}

TEST(TraceFormat, LoadsTheRecordedMap) {
  absl::StatusOr<DeviceMap> map = LoadDeviceMap(
      trace::ResolveDataPath("tests/data/qemu-q35-linux61/devices.tsv"));
  ASSERT_TRUE(map.ok()) << map.status();
  int pio = 0;
  int mmio = 0;
  for (const MapRange& r : map->ranges) (r.bus == BusKind::kPio ? pio : mmio)++;
  // The README: 50 port-I/O ranges, 24 MMIO ranges.
  EXPECT_EQ(pio, 50);
  EXPECT_EQ(mmio, 24);
  EXPECT_EQ(map->names.front(), "dma-chan");
  EXPECT_EQ(map->names.back(), "apic-msi");
}

// ---------------------------------------------------------------------------
// Traces that change the map (map/unmap rows).
// ---------------------------------------------------------------------------

using trace::Burst;
using trace::ChangeTrace;
using trace::LoadChangeTrace;
using trace::MapChange;

TEST(TraceFormat, LoadsChangeRowsBesideAccessRows) {
  const DeviceMap map = LoadGoodMap();
  const std::string path = WriteFile(
      "changes.tsv",
      "# a BAR is mapped, used, unmapped, mapped again; pic is unmapped\n"
      "0\tpio\tw\t0x20\t1\t0x11\tpic\n"
      "-1\tmmio\tmap\t0xfe000000\t16384\t-\tvirtio-blk\n"    // line 3
      "-1\tmmio\tmap\t0xfe600000\t48\t-\tmsix-table\n"       // line 4
      "1\tmmio\tw\t0xfe003000\t4\t0x0\tvirtio-blk\n"         // access 1
      "-1\tmmio\tunmap\t0xfe000000\t16384\t-\tvirtio-blk\n"  // line 6
      "-1\tpio\tunmap\t0x20\t2\t-\tpic\n"                    // line 7
      "0\tpio\tw\t0x20\t1\t0x11\t-\n"                        // access 2
      "-1\tmmio\tmap\t0xfe000000\t16384\t-\tvirtio-blk\n"    // line 9
      "2\tmmio\tr\t0xfe000010\t2\t0x0\tvirtio-blk\n",        // access 3
      /*gzip=*/true);
  absl::StatusOr<ChangeTrace> t = LoadChangeTrace(path, map);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->accesses.size(), 4u);
  ASSERT_EQ(t->changes.size(), 5u);
  EXPECT_EQ(t->map_ranges, map.ranges.size());
  // Map names, then the two new ones in first-use order.
  ASSERT_EQ(t->names.size(), map.names.size() + 2);
  EXPECT_EQ(t->names[map.names.size()], "virtio-blk");
  EXPECT_EQ(t->names[map.names.size() + 1], "msix-table");
  // Ranges: the map's 6, then one per map row (the remap is a new entry).
  ASSERT_EQ(t->ranges.size(), map.ranges.size() + 3);
  const int32_t first_bar = static_cast<int32_t>(map.ranges.size());
  const int32_t second_bar = first_bar + 2;
  EXPECT_EQ(t->ranges[first_bar].first, 0xfe000000u);
  EXPECT_EQ(t->ranges[first_bar].last, 0xfe003fffu);
  EXPECT_EQ(t->ranges[first_bar].line, 3);
  EXPECT_EQ(t->ranges[second_bar].line, 9);

  const MapChange& c0 = t->changes[0];
  EXPECT_TRUE(c0.map);
  EXPECT_EQ(c0.bus, BusKind::kMmio);
  EXPECT_EQ(c0.size, 16384u);
  EXPECT_EQ(c0.range, first_bar);
  EXPECT_EQ(c0.before, 1u);
  EXPECT_EQ(c0.line, 3);
  EXPECT_FALSE(t->changes[2].map);
  EXPECT_EQ(t->changes[2].range, first_bar);  // unmaps what line 3 mapped
  EXPECT_EQ(t->changes[3].range, 0);          // pic, line 3 of the map
  EXPECT_EQ(t->changes[3].device, 0);
  EXPECT_EQ(t->changes[4].range, second_bar);
  EXPECT_EQ(t->changes[4].device, t->changes[0].device);

  EXPECT_EQ(t->accesses[0].range, 0);
  EXPECT_EQ(t->accesses[1].range, first_bar);
  EXPECT_EQ(t->accesses[1].device, c0.device);
  EXPECT_EQ(t->accesses[2].range, -1);
  EXPECT_EQ(t->accesses[2].device, -1);
  EXPECT_EQ(t->accesses[3].range, second_bar);

  const std::vector<Burst> bursts = trace::Bursts(*t);
  ASSERT_EQ(bursts.size(), 3u);
  EXPECT_EQ(bursts[0].begin, 0u);
  EXPECT_EQ(bursts[0].end, 2u);
  EXPECT_EQ(bursts[0].before, 1u);
  EXPECT_EQ(bursts[1].begin, 2u);
  EXPECT_EQ(bursts[1].end, 4u);
  EXPECT_EQ(bursts[1].before, 2u);
  EXPECT_EQ(bursts[2].begin, 4u);
  EXPECT_EQ(bursts[2].end, 5u);
  EXPECT_EQ(bursts[2].before, 3u);
}

TEST(TraceFormat, LoadTraceRefusesChangeRows) {
  const DeviceMap map = LoadGoodMap();
  const std::string path =
      WriteFile("refused.tsv",
                "0\tpio\tw\t0x20\t1\t0x11\tpic\n"
                "-1\tmmio\tmap\t0xfe000000\t16384\t-\tvirtio-blk\n");
  absl::StatusOr<std::vector<Access>> t = LoadTrace(path, map);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      t.status().message(),
      HasSubstr(absl::StrCat(path,
                             ":2: a map row: this trace changes "
                             "the map; load it with LoadChangeTrace()")));
}

TEST(TraceFormat, BadChangeLinesNameFileAndLine) {
  const DeviceMap map = LoadGoodMap();
  const BadLine cases[] = {
      // Line 2 of every file maps bar at [0x1000, 0x100f].
      {"-1\tmmio\tunmap\t0x1000\t16\t-\tbar", nullptr},
      {"-1\tpio\tunmap\t0x20\t2\t-\tpic", nullptr},   // a range of the map
      {"-1\tmmio\tmap\t0x1010\t1\t-\tbar", nullptr},  // adjacent: fine
      {"-1\tmmio\tunmap\t0x2000\t16\t-\tbar",
       "unmap of mmio [0x2000, 0x200f] 'bar': no such range is live (nothing "
       "is mapped there)"},
      {"-1\tmmio\tunmap\t0x1000\t8\t-\tbar",
       "no such range is live (the live range there is [0x1000, 0x100f] of "
       "'bar' (mapped at line 2))"},
      {"-1\tmmio\tunmap\t0x1004\t4\t-\tbar", "no such range is live"},
      {"-1\tmmio\tunmap\t0x1000\t16\t-\tbaz", "no such range is live"},
      {"-1\tpio\tunmap\t0x1000\t16\t-\tbar", "nothing is mapped there"},
      {"-1\tpio\tunmap\t0x20\t2\t-\tserial",
       "(the live range there is [0x20, 0x21] of 'pic' (line 3 of the map))"},
      {"-1\tmmio\tmap\t0x100f\t1\t-\tother",
       "map of mmio [0x100f, 0x100f] 'other' overlaps the live range [0x1000, "
       "0x100f] of 'bar' (mapped at line 2)"},
      {"-1\tmmio\tmap\t0xff0\t4096\t-\tbar", "overlaps the live range"},
      {"-1\tmmio\tmap\t0x1000\t16\t-\tbar", "overlaps the live range"},
      {"-1\tpio\tmap\t0x3f0\t16\t-\tx",
       "overlaps the live range [0x3f8, 0x3ff] of 'serial' (line 5 of the "
       "map)"},
      {"-1\tmmio\tmap\t0x10g0\t16\t-\tbar2", "bad hex address '0x10g0'"},
      {"-1\tmmio\tmap\t4096\t16\t-\tbar2", "bad hex address '4096'"},
      {"-1\tmmio\tmap\t0x2000\t0\t-\tbar2",
       "bad size '0' in a map row (expected decimal bytes, at least 1)"},
      {"-1\tmmio\tunmap\t0x1000\t0\t-\tbar", "bad size '0' in a unmap row"},
      {"-1\tmmio\tmap\t0x2000\t0x10\t-\tbar2", "bad size '0x10'"},
      {"-1\tmmio\tmap\t0x2000\t-16\t-\tbar2", "bad size '-16'"},
      {"-1\tmmio\tmap\t0x2000\t\t-\tbar2", "bad size ''"},
      {"-1\tmmio\tmap\t0x2000\t18446744073709551616\t-\tbar2",
       "bad size '18446744073709551616'"},
      {"-1\tpio\tmap\t0xfff0\t17\t-\tx",
       "pio range at 0xfff0 of 17 bytes runs past the last address 0xffff"},
      {"-1\tpio\tmap\t0x10000\t1\t-\tx", "runs past the last address 0xffff"},
      {"-1\tpio\tmap\t0xfff0\t16\t-\tx", "overlaps the live range"},  // top
      {"-1\tmmio\tmap\t0xfffffffffffffff0\t17\t-\tx",
       "runs past the last address 0xffffffffffffffff"},
      {"-1\tmmio\tmap\t0xfffffffffffffff0\t16\t-\tx", nullptr},
      {"0\tmmio\tmap\t0x2000\t16\t-\tbar2",
       "a map row has vcpu '0' (expected "
       "-1)"},
      {"-1\tmmio\tmap\t0x2000\t16\t0x0\tbar2",
       "a map row has value '0x0' (expected '-')"},
      {"-1\tmmio\tmap\t0x2000\t16\t-\t-", "bad device name '-' in a map row"},
      {"-1\tmmio\tmap\t0x2000\t16\t-\t", "bad device name '' in a map row"},
      {"-1\tisa\tmap\t0x2000\t16\t-\tbar2", "unknown bus 'isa'"},
      {"-1\tmmio\tremap\t0x2000\t16\t-\tbar2",
       "unknown op 'remap' (expected 'r', 'w', 'map' or 'unmap')"},
      {"-1\tmmio\tmap\t0x2000\t16\t-", "expected 7 TAB-separated fields"},
      {"0\tmmio\tr\t0x1010\t4\t0x0\tbar",
       "address 0x1010 is not inside a live mmio range of 'bar' (no range "
       "holds it)"},
      {"0\tmmio\tr\t0x100c\t4\t0x0\tbar", nullptr},
      {"0\tmmio\tr\t0x100c\t4\t0x0\tnew",
       "region 'new' is not a device of the map"},
  };
  for (const BadLine& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string path = WriteFile(
        "bad_changes.tsv", absl::StrCat("# header\n"
                                        "-1\tmmio\tmap\t0x1000\t16\t-\tbar\n",
                                        c.line, "\n"));
    absl::StatusOr<ChangeTrace> t = LoadChangeTrace(path, map);
    if (c.why == nullptr) {
      EXPECT_TRUE(t.ok()) << t.status();
      continue;
    }
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(absl::StrCat(path, ":3: ")));
    EXPECT_THAT(t.status().message(), HasSubstr(c.why));
  }
}

TEST(TraceFormat, AnAccessAfterItsRangeWasUnmappedIsAnError) {
  const DeviceMap map = LoadGoodMap();
  const std::string path = WriteFile("after_unmap.tsv",
                                     "-1\tmmio\tmap\t0x1000\t16\t-\tbar\n"
                                     "0\tmmio\tr\t0x1000\t4\t0x0\tbar\n"
                                     "-1\tmmio\tunmap\t0x1000\t16\t-\tbar\n"
                                     "0\tmmio\tr\t0x1000\t4\t0x0\tbar\n");
  absl::StatusOr<ChangeTrace> t = LoadChangeTrace(path, map);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(
      t.status().message(),
      HasSubstr(absl::StrCat(path,
                             ":4: address 0x1000 is not inside a live "
                             "mmio range of 'bar' (no range holds it)")));
}

// The figures of tests/data/qemu-q35-hotplug/README.md.
TEST(TraceFormat, LoadsTheRecordedHotplugTrace) {
  absl::StatusOr<DeviceMap> map = LoadDeviceMap(
      trace::ResolveDataPath("tests/data/qemu-q35-hotplug/devices.tsv"));
  ASSERT_TRUE(map.ok()) << map.status();
  int pio = 0;
  for (const MapRange& r : map->ranges) pio += r.bus == BusKind::kPio;
  EXPECT_EQ(pio, 45);
  EXPECT_EQ(map->ranges.size() - pio, 6u);
  absl::StatusOr<ChangeTrace> t = LoadChangeTrace(
      trace::ResolveDataPath("tests/data/qemu-q35-hotplug/trace.tsv.gz"), *map);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->accesses.size(), 410888u);
  size_t maps = 0, mmio = 0, dash = 0;
  for (const MapChange& c : t->changes) maps += c.map;
  EXPECT_EQ(maps, 191u);
  EXPECT_EQ(t->changes.size() - maps, 165u);
  std::map<int32_t, size_t> per_vcpu;
  for (const Access& a : t->accesses) {
    mmio += a.bus == BusKind::kMmio;
    dash += a.device < 0;
    ++per_vcpu[a.vcpu];
  }
  EXPECT_EQ(mmio, 242460u);
  EXPECT_EQ(dash, 3289u);
  EXPECT_EQ(per_vcpu[-1], 8397u);
  EXPECT_EQ(per_vcpu[0], 264888u);
  EXPECT_EQ(per_vcpu[1], 42487u);
  EXPECT_EQ(per_vcpu[2], 31555u);
  EXPECT_EQ(per_vcpu[3], 63561u);
  // Distinct names over the run: 39 in devices.tsv, 17 more from map rows.
  // (The data's README says 51; counting its files gives 56.)
  EXPECT_EQ(t->names.size(), 56u);

  const std::vector<Burst> bursts = trace::Bursts(*t);
  EXPECT_EQ(bursts.size(), 89u);
  EXPECT_EQ(bursts.front().before, 1378u);
  EXPECT_EQ(t->accesses.size() - bursts.back().before, 1445u);

  // The hot-plugged device: 6 ranges mapped in one burst, unmapped in
  // another; 799 accesses reach them in between.
  std::vector<int32_t> hotplug;
  for (const MapChange& c : t->changes) {
    if (c.map && c.bus == BusKind::kMmio &&
        ((c.first >= 0xfe000000 && c.first < 0xfe004000) ||
         (c.first >= 0xfe600000 && c.first < 0xfe601000))) {
      hotplug.push_back(c.range);
    }
  }
  ASSERT_EQ(hotplug.size(), 6u);
  size_t hits = 0;
  for (const Access& a : t->accesses) {
    hits += std::find(hotplug.begin(), hotplug.end(), a.range) != hotplug.end();
  }
  EXPECT_EQ(hits, 799u);
}

}  // namespace
}  // namespace vm_device
