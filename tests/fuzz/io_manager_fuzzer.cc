// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// libFuzzer target: drives IoManager with arbitrary sequences of register,
// deregister, resource registration, batches, moves, lookups and accesses on
// both buses, and checks every answer against a plain reference model
// written here (std::map of ranges), and the whole state after every
// operation that may change it and at the end of each input (Run). Any
// divergence aborts with a description. Two of the device indices are devices
// behind access rules (access_rules.h), which the model checks too.
//
// Build and run: tools/run_fuzzer.sh [seconds]. The same file, built with
// VM_DEVICE_FUZZ_REPLAY_MAIN, is //tests:io_manager_fuzz_replay_test, which
// runs every file of tests/fuzz/corpus once.
//
// Input format: a stream of operations, each an opcode byte followed by its
// operands; a value that runs past the end of the input reads as zeros.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

[[noreturn]] void Diverge(const std::string& what) {
  std::fprintf(stderr, "DIVERGENCE: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

#define FUZZ_CHECK(cond, what)                                \
  do {                                                        \
    if (!(cond)) Diverge(std::string(#cond) + ": " + (what)); \
  } while (0)

// ---------------------------------------------------------------------------
// Input decoding
// ---------------------------------------------------------------------------

class Input {
 public:
  Input(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool empty() const { return p_ == end_; }
  uint8_t U8() { return p_ == end_ ? 0 : *p_++; }
  uint64_t Bytes(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{U8()} << (8 * i);
    return v;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// ---------------------------------------------------------------------------
// The devices
// ---------------------------------------------------------------------------

constexpr int kDevices = 6;  // plain devices: indices 0..5
// Indices 6 and 7: devices 4 and 5 behind access rules (access_rules.h), one
// object per bus; index kNull (8) means "null device".
constexpr int kRuled = 2;
constexpr int kNull = kDevices + kRuled;
const AccessRules kRules[kRuled] = {
    {.min_size = 2, .max_size = 4, .alignment = 2},
    {.max_size = 8, .natural_alignment = true},
};
// The plain device behind index `dev`.
int Inner(int dev) { return dev < kDevices ? dev : dev - kRuled; }
// Whether the model lets an access of `len` at `offset` through index `dev`.
bool Allowed(int dev, uint64_t offset, size_t len) {
  if (dev < kDevices) return true;
  const AccessRules& r = kRules[dev - kDevices];
  return len >= r.min_size && (r.max_size == 0 || len <= r.max_size) &&
         offset % r.alignment == 0 && (!r.natural_alignment || offset % len == 0);
}

struct LastCall {
  int calls = 0;
  int device = -1;
  bool pio = false;
  uint64_t base = 0, offset = 0;
  size_t len = 0;
  uint32_t write_sum = 0;
};
LastCall g_call;

class FuzzDevice final : public DevicePio, public DeviceMmio {
 public:
  explicit FuzzDevice(int id) : id_(id) {}
  static uint8_t Pattern(int id, uint64_t offset, size_t i) {
    return static_cast<uint8_t>(id * 37 + offset * 7 + i);
  }
  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Record(true, base.value(), offset, data.size(), 0);
    for (size_t i = 0; i < data.size(); ++i) data[i] = Pattern(id_, offset, i);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    Record(true, base.value(), offset, data.size(), Sum(data));
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Record(false, base.value(), offset, data.size(), 0);
    for (size_t i = 0; i < data.size(); ++i) data[i] = Pattern(id_, offset, i);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    Record(false, base.value(), offset, data.size(), Sum(data));
  }
  static uint32_t Sum(absl::Span<const uint8_t> d) {
    uint32_t s = 0;
    for (uint8_t b : d) s = s * 31 + b;
    return s;
  }

 private:
  void Record(bool pio, uint64_t base, uint64_t offset, size_t len,
              uint32_t sum) const {
    ++g_call.calls;
    g_call.device = id_;
    g_call.pio = pio;
    g_call.base = base;
    g_call.offset = offset;
    g_call.len = len;
    g_call.write_sum = sum;
  }
  int id_;
};

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

struct Entry {
  uint64_t last;
  int device;
};

// One bus: base -> {last, device}; max is the top address.
struct ModelBus {
  uint64_t max;
  std::map<uint64_t, Entry> ranges;

  static bool ValidRange(uint64_t max, uint64_t base, uint64_t size) {
    return size != 0 && base <= max && size - 1 <= max - base;
  }
  // The entry holding addr.
  std::map<uint64_t, Entry>::const_iterator Holding(uint64_t addr) const {
    auto it = ranges.upper_bound(addr);
    if (it == ranges.begin()) return ranges.end();
    --it;
    return it->second.last >= addr ? it : ranges.end();
  }
  // Whether a range other than the one at `except` (if any) overlaps.
  bool Overlaps(uint64_t base, uint64_t last,
                std::optional<uint64_t> except = std::nullopt) const {
    for (const auto& [b, e] : ranges) {
      if (b <= last && e.last >= base && b != except) return true;
    }
    return false;
  }
};

struct Model {
  ModelBus pio{0xffff, {}};
  ModelBus mmio{~uint64_t{0}, {}};
  ModelBus& bus(bool is_pio) { return is_pio ? pio : mmio; }
};

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

// Operations run and checked against the model, and inputs, in this process
// (printed at exit; tools/run_fuzzer.sh reports the total).
uint64_t g_operations = 0;
uint64_t g_inputs = 0;

void PrintTotals() {
  std::printf(
      "io_manager_fuzzer: %llu inputs, %llu operations checked against the "
      "model\n",
      static_cast<unsigned long long>(g_inputs),
      static_cast<unsigned long long>(g_operations));
}

// One input's run, on a manager of its own. The manager is destroyed at the
// end of the run, and its destructor waits until the reclaimer has freed
// everything it retired: every input ends with all of its memory freed, so
// libFuzzer's per-input leak check (more mallocs than frees during an input)
// never fires falsely and stays on for the whole run. LeakCheck() then checks
// that the manager let go of every device.
//
// Where the time goes (perf, README.md "Fuzzer throughput"): the library's
// own registration work under ASan (allocations) and the state checks. So the
// state check after each change reads the published snapshot through
// Visit*Device (wait-free, no reference count, no mutex), and the master copy
// through Pio/MmioDevice only at the end of the input; reads skip it.
class Run {
 public:
  Run() : devices_(Devices()), manager_(std::make_unique<IoManager>()) {
    if (g_inputs++ == 0) std::atexit(PrintTotals);
  }

  ~Run() {
    CheckState(/*master_copy=*/true);
    manager_.reset();
    LeakCheck();
  }

  static void LeakCheck() {
    PioRuled();  // built, so that they hold their references
    MmioRuled();
    const auto& devices = Devices();
    for (int i = 0; i < kDevices; ++i) {
      // Devices 4 and 5 are also held by their two ruled objects each.
      const long held = i >= kDevices - kRuled ? 3 : 1;
      FUZZ_CHECK(devices[i].use_count() == held,
                 "device " + std::to_string(i) + " leaked a reference");
    }
    for (int i = 0; i < kRuled; ++i) {
      FUZZ_CHECK(PioRuled()[i].use_count() == 1 &&
                     MmioRuled()[i].use_count() == 1,
                 "ruled device " + std::to_string(kDevices + i) +
                     " leaked a reference");
    }
  }

  void Step(Input& in) {
    ++g_operations;
    const uint8_t op = in.U8();
    const bool pio = (op & 0x80) != 0;
    // Whether the operation may change the manager's state: accesses,
    // lookups and range checks are const on the manager (their answers are
    // checked against the model here; the state after them is checked with
    // the next change's and at the end of the input).
    bool changes = true;
    switch ((op & 0x7f) % 12) {
      case 0:
        Register(in, pio);
        break;
      case 1:
        Deregister(in, pio);
        break;
      case 2:
        Move(in, pio);
        break;
      case 3:
        Access(in, pio, /*write=*/false);
        changes = false;
        break;
      case 4:
        Access(in, pio, /*write=*/true);
        changes = false;
        break;
      case 5:
        Lookup(in, pio);
        changes = false;
        break;
      case 6:
        Batch(in);
        break;
      case 7:
        RegisterResources(in);
        break;
      case 8:
        DeregisterResources(in);
        break;
      case 9:
        Access(in, pio, (op & 1) != 0);
        changes = false;
        break;
      case 10:
        RegisterMany(in, pio);
        break;
      case 11:
        CheckRangeFactory(in, pio);
        changes = false;
        break;
    }
    if (changes) CheckState();
  }

 private:
  // An address: small, near the top, raw, or at/around a registered range.
  uint64_t Address(Input& in, bool pio) {
    const ModelBus& b = model_.bus(pio);
    const uint8_t mode = in.U8();
    switch (mode % 6) {
      case 0:
        return in.U8();
      case 1:
        return b.max - in.U8();
      case 2:
        return in.Bytes(pio ? 2 : 8) & b.max;
      case 3:
      case 4:
      case 5: {
        if (b.ranges.empty()) return in.U8();
        auto it = b.ranges.begin();
        std::advance(it, in.U8() % b.ranges.size());
        const uint64_t where[] = {
            it->first, it->second.last, it->second.last + 1, it->first - 1,
            it->first + (it->second.last - it->first) / 2};
        return where[mode % 5] & b.max;
      }
    }
    return 0;
  }
  // A range size: small, zero, to the top, huge, raw.
  uint64_t Size(Input& in, bool pio, uint64_t base) {
    const ModelBus& b = model_.bus(pio);
    const uint8_t mode = in.U8();
    switch (mode % 6) {
      case 0:
        return 0;
      case 1:
        return b.max - base + 1;  // exactly to the top (or 0)
      case 2:
        return b.max - base + 2;  // one past the top
      case 3:
        return in.Bytes(pio ? 2 : 8) & b.max;
      default:
        return 1 + in.U8() % 32;
    }
  }
  int DeviceIndex(Input& in) { return in.U8() % (kNull + 1); }

  template <typename T>
  std::shared_ptr<T> Dev(int i) {
    if (i >= kNull) return nullptr;
    if (i < kDevices) return devices_[i];
    if constexpr (std::is_same_v<T, DevicePio>) {
      return PioRuled()[i - kDevices];
    } else {
      return MmioRuled()[i - kDevices];
    }
  }
  // The index of a device the manager handed back (by address: a plain
  // FuzzDevice or one of the ruled objects of that bus), or -1.
  static int IndexOf(const DevicePio* p) { return Find(DeviceTable().pio, p); }
  static int IndexOf(const DeviceMmio* p) {
    return Find(DeviceTable().mmio, p);
  }
  template <typename T>
  static int Find(T* const (&table)[kNull], T* p) {
    for (int i = 0; i < kNull; ++i) {
      if (table[i] == p) return i;
    }
    return -1;
  }
  // Each index's object as a DevicePio and as a DeviceMmio, built once.
  struct Table {
    const DevicePio* pio[kNull];
    const DeviceMmio* mmio[kNull];
  };
  static const Table& DeviceTable() {
    static const Table table = [] {
      Table t;
      for (int i = 0; i < kDevices; ++i) {
        t.pio[i] = Devices()[i].get();
        t.mmio[i] = Devices()[i].get();
      }
      for (int i = 0; i < kRuled; ++i) {
        t.pio[kDevices + i] = PioRuled()[i].get();
        t.mmio[kDevices + i] = MmioRuled()[i].get();
      }
      return t;
    }();
    return table;
  }

  static std::string Hex(uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%llx",
                  static_cast<unsigned long long>(v));
    return buf;
  }

  // BusRange::Create agrees with the model's validity rule.
  void CheckRangeFactory(Input& in, bool pio) {
    const uint64_t base = Address(in, pio);
    const uint64_t size = Size(in, pio, base) & model_.bus(pio).max;
    const bool valid = ModelBus::ValidRange(model_.bus(pio).max, base, size);
    const bool ok =
        pio ? PioRange::Create(PioAddress(uint16_t(base)), uint16_t(size)).ok()
            : MmioRange::Create(MmioAddress(base), size).ok();
    FUZZ_CHECK(ok == valid, "Create(" + Hex(base) + ", " + Hex(size) + ")");
  }

  void Register(Input& in, bool pio) {
    const uint64_t base = Address(in, pio);
    const uint64_t size = Size(in, pio, base) & model_.bus(pio).max;
    const int dev = DeviceIndex(in);
    DoRegister(pio, base, size, dev);
  }

  // The same device on many consecutive ranges.
  void RegisterMany(Input& in, bool pio) {
    uint64_t base = Address(in, pio);
    const uint64_t size = 1 + in.U8() % 8;
    const int n = in.U8() % 12;
    const int dev = DeviceIndex(in);
    for (int i = 0; i < n; ++i) {
      DoRegister(pio, base, size, dev);
      base = (base + size + (in.U8() & 1)) & model_.bus(pio).max;
    }
  }

  void DoRegister(bool pio, uint64_t base, uint64_t size, int dev) {
    ModelBus& b = model_.bus(pio);
    if (!ModelBus::ValidRange(b.max, base, size)) return;  // cannot be built
    const uint64_t last = base + size - 1;
    absl::StatusCode want = absl::StatusCode::kOk;
    if (dev == kNull) {
      want = absl::StatusCode::kInvalidArgument;
    } else if (b.Overlaps(base, last)) {
      want = absl::StatusCode::kAlreadyExists;
    }
    const absl::Status got =
        pio ? manager_->RegisterPio(
                  *PioRange::Create(PioAddress(uint16_t(base)), uint16_t(size)),
                  Dev<DevicePio>(dev))
            : manager_->RegisterMmio(
                  *MmioRange::Create(MmioAddress(base), size),
                  Dev<DeviceMmio>(dev));
    FUZZ_CHECK(got.code() == want, "register " + Hex(base) + "+" + Hex(size) +
                                       ": " + got.ToString());
    if (want == absl::StatusCode::kOk) b.ranges[base] = Entry{last, dev};
  }

  void Deregister(Input& in, bool pio) {
    const uint64_t addr = Address(in, pio);
    ModelBus& b = model_.bus(pio);
    auto it = b.Holding(addr);
    uint64_t got_base = 0, got_size = 0;
    int got_dev = -1;
    absl::Status st;
    if (pio) {
      auto r = manager_->DeregisterPio(PioAddress(uint16_t(addr)));
      st = r.status();
      if (r.ok()) {
        got_base = r->first.base().value();
        got_size = r->first.size();
        got_dev = IndexOf(r->second.get());
      }
    } else {
      auto r = manager_->DeregisterMmio(MmioAddress(addr));
      st = r.status();
      if (r.ok()) {
        got_base = r->first.base().value();
        got_size = r->first.size();
        got_dev = IndexOf(r->second.get());
      }
    }
    if (it == b.ranges.end()) {
      FUZZ_CHECK(st.code() == absl::StatusCode::kNotFound,
                 "deregister " + Hex(addr) + ": " + st.ToString());
      return;
    }
    FUZZ_CHECK(st.ok(), "deregister " + Hex(addr) + ": " + st.ToString());
    FUZZ_CHECK(got_base == it->first &&
                   got_size == it->second.last - it->first + 1 &&
                   got_dev == it->second.device,
               "deregister " + Hex(addr) + " returned the wrong range/device");
    b.ranges.erase(it);
  }

  void Move(Input& in, bool pio) {
    const uint64_t addr = Address(in, pio);
    const uint64_t new_base = Address(in, pio);
    ModelBus& b = model_.bus(pio);
    auto it = b.Holding(addr);
    absl::StatusCode want = absl::StatusCode::kOk;
    uint64_t size = 0;
    int dev = -1;
    if (it == b.ranges.end()) {
      want = absl::StatusCode::kNotFound;
    } else {
      size = it->second.last - it->first + 1;
      dev = it->second.device;
      if (!ModelBus::ValidRange(b.max, new_base, size)) {
        want = absl::StatusCode::kInvalidArgument;
      } else {
        if (b.Overlaps(new_base, new_base + size - 1, /*except=*/it->first)) {
          want = absl::StatusCode::kAlreadyExists;
        }
      }
    }
    const absl::Status got =
        pio ? manager_->MovePio(PioAddress(uint16_t(addr)),
                                PioAddress(uint16_t(new_base)))
            : manager_->MoveMmio(MmioAddress(addr), MmioAddress(new_base));
    FUZZ_CHECK(got.code() == want, "move " + Hex(addr) + " to " +
                                       Hex(new_base) + ": " + got.ToString());
    if (want == absl::StatusCode::kOk) {
      b.ranges.erase(it);
      b.ranges[new_base] = Entry{new_base + size - 1, dev};
    }
  }

  void Access(Input& in, bool pio, bool write) {
    const uint64_t addr = Address(in, pio);
    const uint8_t lsel = in.U8();
    // Every length 0..16, and now and then one the PIO size type cannot hold.
    size_t len = lsel % 17;
    if (lsel == 0xff) len = 0x10000;
    if (lsel == 0xfe) len = 0xffff;
    static uint8_t big[0x10000];
    uint8_t small[16];
    uint8_t* buf = len <= 16 ? small : big;
    for (size_t i = 0; i < len && i < 16; ++i) buf[i] = in.U8();
    const ModelBus& b = model_.bus(pio);

    IoStatus want;
    uint64_t hit_base = 0;
    if (pio && len > 0xffff) {
      want = IoStatus::kInvalidAccessLength;
    } else if (len == 0 || len - 1 > b.max - addr) {
      want = IoStatus::kInvalidRange;
    } else {
      auto it = b.Holding(addr);
      if (it != b.ranges.end() && it->second.last >= addr + (len - 1)) {
        hit_base = it->first;
        expected_dev_ = Inner(it->second.device);
        want = Allowed(it->second.device, addr - hit_base, len)
                   ? IoStatus::kOk
                   : IoStatus::kAccessRuleViolation;
      } else {
        want = IoStatus::kDeviceNotFound;
      }
    }
    g_call = LastCall{};
    const absl::Span<uint8_t> data(buf, len);
    IoStatus got;
    if (pio) {
      const PioAddress a(static_cast<uint16_t>(addr));
      got = write ? manager_->PioWrite(a, data) : manager_->PioRead(a, data);
    } else {
      const MmioAddress a(addr);
      got = write ? manager_->MmioWrite(a, data) : manager_->MmioRead(a, data);
    }
    // The access, for a divergence message (built only then).
    auto what = [&] {
      return std::string(pio ? "PIO " : "MMIO ") + (write ? "write " : "read ") +
             Hex(addr) + " len " + std::to_string(len);
    };
    FUZZ_CHECK(got == want, what() + ": got " + std::string(IoStatusName(got)) +
                                ", want " + std::string(IoStatusName(want)));
    if (want != IoStatus::kOk) {
      FUZZ_CHECK(g_call.calls == 0, what() + ": a device was called");
      return;
    }
    FUZZ_CHECK(g_call.calls == 1 && g_call.pio == pio &&
                   g_call.device == expected_dev_ && g_call.base == hit_base &&
                   g_call.offset == addr - hit_base && g_call.len == len,
               what() + ": wrong handler call");
    if (write) {
      // Only now, for a write that reached a device: up to 64 KiB to sum.
      FUZZ_CHECK(g_call.write_sum == FuzzDevice::Sum(absl::MakeConstSpan(buf, len)),
                 what() + ": data changed");
    } else {
      for (size_t i = 0; i < len; ++i) {
        FUZZ_CHECK(
            buf[i] == FuzzDevice::Pattern(expected_dev_, addr - hit_base, i),
            what() + ": read data");
      }
    }
  }

  void Lookup(Input& in, bool pio) {
    const uint64_t addr = Address(in, pio);
    const ModelBus& b = model_.bus(pio);
    auto it = b.Holding(addr);
    std::optional<std::pair<uint64_t, uint64_t>> range;
    int dev = -1;
    bool visited = false;
    uint64_t vbase = 0, vsize = 0;
    if (pio) {
      auto r = manager_->PioDevice(PioAddress(uint16_t(addr)));
      if (r) {
        range = {r->first.base().value(), r->first.size()};
        dev = IndexOf(r->second.get());
      }
      visited =
          manager_->VisitPioDevice(PioAddress(uint16_t(addr)),
                                   [&](const PioRange& rr, const DevicePio&) {
                                     vbase = rr.base().value();
                                     vsize = rr.size();
                                   });
    } else {
      auto r = manager_->MmioDevice(MmioAddress(addr));
      if (r) {
        range = {r->first.base().value(), r->first.size()};
        dev = IndexOf(r->second.get());
      }
      visited = manager_->VisitMmioDevice(
          MmioAddress(addr), [&](const MmioRange& rr, const DeviceMmio&) {
            vbase = rr.base().value();
            vsize = rr.size();
          });
    }
    if (it == b.ranges.end()) {
      FUZZ_CHECK(!range && !visited, "lookup " + Hex(addr) + " found a range");
      return;
    }
    const uint64_t size = it->second.last - it->first + 1;
    FUZZ_CHECK(range && range->first == it->first && range->second == size &&
                   dev == it->second.device,
               "lookup " + Hex(addr));
    FUZZ_CHECK(visited && vbase == it->first && vsize == size,
               "visit " + Hex(addr));
  }

  // A batch of adds and removes on both buses, all or nothing.
  void Batch(Input& in) {
    const int n = in.U8() % 8;
    IoBatch batch;
    Model next = model_;
    absl::StatusCode want = absl::StatusCode::kOk;
    std::vector<std::pair<bool, std::pair<uint64_t, uint64_t>>>
        removed;  // pio?, base/size
    std::vector<int> removed_dev;
    int added = 0;
    for (int i = 0; i < n; ++i) {
      const uint8_t k = in.U8();
      const bool pio = (k & 1) != 0;
      ModelBus& b = next.bus(pio);
      if ((k & 2) != 0) {
        const uint64_t base = Address(in, pio);
        const uint64_t size = Size(in, pio, base) & b.max;
        const int dev = DeviceIndex(in);
        if (!ModelBus::ValidRange(b.max, base, size)) continue;
        if (pio) {
          batch.AddPio(
              *PioRange::Create(PioAddress(uint16_t(base)), uint16_t(size)),
              Dev<DevicePio>(dev));
        } else {
          batch.AddMmio(*MmioRange::Create(MmioAddress(base), size),
                        Dev<DeviceMmio>(dev));
        }
        ++added;
        if (want != absl::StatusCode::kOk) continue;
        if (dev == kNull) {
          want = absl::StatusCode::kInvalidArgument;
        } else if (b.Overlaps(base, base + size - 1)) {
          want = absl::StatusCode::kAlreadyExists;
        } else {
          b.ranges[base] = Entry{base + size - 1, dev};
        }
      } else {
        const uint64_t addr = Address(in, pio);
        if (pio) {
          batch.RemovePio(PioAddress(uint16_t(addr)));
        } else {
          batch.RemoveMmio(MmioAddress(addr));
        }
        if (want != absl::StatusCode::kOk) continue;
        auto it = b.Holding(addr);
        if (it == b.ranges.end()) {
          want = absl::StatusCode::kNotFound;
        } else {
          removed.push_back(
              {pio, {it->first, it->second.last - it->first + 1}});
          removed_dev.push_back(it->second.device);
          b.ranges.erase(it);
        }
      }
    }
    (void)added;
    absl::StatusOr<IoBatch::Removed> got = manager_->Commit(std::move(batch));
    FUZZ_CHECK(got.status().code() == want,
               "batch: " + got.status().ToString());
    if (!got.ok()) return;  // the model is unchanged too
    // The removed ranges, in order, per bus.
    size_t ip = 0, im = 0;
    for (size_t i = 0; i < removed.size(); ++i) {
      const auto& [is_pio, r] = removed[i];
      if (is_pio) {
        FUZZ_CHECK(ip < got->pio.size(), "batch removed too few PIO ranges");
        const auto& [range, dev] = got->pio[ip++];
        FUZZ_CHECK(
            range.base().value() == r.first && range.size() == r.second &&
                IndexOf(dev.get()) == removed_dev[i],
            "batch removed the wrong PIO range");
      } else {
        FUZZ_CHECK(im < got->mmio.size(), "batch removed too few MMIO ranges");
        const auto& [range, dev] = got->mmio[im++];
        FUZZ_CHECK(
            range.base().value() == r.first && range.size() == r.second &&
                IndexOf(dev.get()) == removed_dev[i],
            "batch removed the wrong MMIO range");
      }
    }
    FUZZ_CHECK(ip == got->pio.size() && im == got->mmio.size(),
               "batch removed extra ranges");
    model_ = std::move(next);
  }

  std::vector<Resource> Resources(Input& in) {
    std::vector<Resource> res;
    const int n = in.U8() % 8;
    for (int i = 0; i < n; ++i) {
      const uint8_t k = in.U8();
      switch (k % 5) {
        case 0:
        case 1: {
          const uint64_t base = Address(in, true);
          const uint64_t size = Size(in, true, base) & 0xffff;
          res.push_back(PioAddressRange{uint16_t(base), uint16_t(size)});
          break;
        }
        case 2:
        case 3: {
          const uint64_t base = Address(in, false);
          res.push_back(MmioAddressRange{base, Size(in, false, base)});
          break;
        }
        default:
          if (k & 0x10) {
            res.push_back(LegacyIrq{in.U8()});
          } else if (k & 0x20) {
            res.push_back(MsiIrq{MsiIrqType::kPciMsix, in.U8(), in.U8()});
          } else if (k & 0x40) {
            res.push_back(MacAddress{"52:54:00:12:34:56"});
          } else {
            res.push_back(KvmMemSlot{in.U8()});
          }
      }
    }
    return res;
  }

  // RegisterResources (both buses), RegisterPioResources or
  // RegisterMmioResources; all or nothing.
  void RegisterResources(Input& in) {
    uint8_t which = in.U8() % 3;  // 0 both, 1 PIO only, 2 MMIO only
    const int dev = DeviceIndex(in);
    // A ruled device is one object per bus: register it on one bus.
    if (dev >= kDevices && dev < kNull && which == 0) which = 1;
    const std::vector<Resource> res = Resources(in);
    const bool want_pio = which != 2, want_mmio = which != 1;
    Model next = model_;
    absl::StatusCode want = absl::StatusCode::kOk;
    // The library checks every range (MMIO first, then PIO) before it
    // applies any; then applies MMIO ranges, then PIO ranges, in order.
    std::vector<std::pair<bool, std::pair<uint64_t, uint64_t>>> order;
    for (bool pio : {false, true}) {
      if ((pio && !want_pio) || (!pio && !want_mmio)) continue;
      for (const Resource& r : res) {
        if (pio) {
          if (const auto* p = std::get_if<PioAddressRange>(&r)) {
            order.push_back({true, {p->base, p->size}});
          }
        } else if (const auto* m = std::get_if<MmioAddressRange>(&r)) {
          order.push_back({false, {m->base, m->size}});
        }
      }
    }
    if (dev == kNull) want = absl::StatusCode::kInvalidArgument;  // even with no range
    for (const auto& [pio, r] : order) {
      if (!ModelBus::ValidRange(next.bus(pio).max, r.first, r.second) ||
          dev == kNull) {
        want = absl::StatusCode::kInvalidArgument;
        break;
      }
    }
    if (want == absl::StatusCode::kOk) {
      for (const auto& [pio, r] : order) {
        ModelBus& b = next.bus(pio);
        if (b.Overlaps(r.first, r.first + r.second - 1)) {
          want = absl::StatusCode::kAlreadyExists;
          break;
        }
        b.ranges[r.first] = Entry{r.first + r.second - 1, dev};
      }
    }
    absl::Status got;
    if (which == 0) {
      auto d = dev < kDevices ? devices_[dev] : nullptr;
      got = manager_->RegisterResources(d, res);
    } else if (which == 1) {
      got = manager_->RegisterPioResources(Dev<DevicePio>(dev), res);
    } else {
      got = manager_->RegisterMmioResources(Dev<DeviceMmio>(dev), res);
    }
    FUZZ_CHECK(got.code() == want, "register resources: " + got.ToString());
    if (got.ok()) model_ = std::move(next);
  }

  void DeregisterResources(Input& in) {
    const std::vector<Resource> res = Resources(in);
    size_t want = 0;
    for (const Resource& r : res) {
      ModelBus* b = nullptr;
      uint64_t base = 0;
      if (const auto* p = std::get_if<PioAddressRange>(&r)) {
        b = &model_.pio;
        base = p->base;
      } else if (const auto* m = std::get_if<MmioAddressRange>(&r)) {
        b = &model_.mmio;
        base = m->base;
      }
      if (b == nullptr) continue;
      auto it = b->Holding(base);
      if (it != b->ranges.end()) {
        b->ranges.erase(it);
        ++want;
      }
    }
    const size_t got = manager_->DeregisterResources(res);
    FUZZ_CHECK(got == want, "deregister resources removed " +
                                std::to_string(got) + ", want " +
                                std::to_string(want));
  }

  // The manager's whole state equals the model's. After every step: the
  // published snapshot, which dispatch reads (through Visit*Device, which is
  // wait-free and takes no reference). With `master_copy` (at the end of each
  // input): also the writer's master copy (Pio/MmioDevice), so the two may
  // not drift apart unnoticed either.
  // Walks a bus's snapshot with `visit` (Visit*Ranges) and checks it range
  // by range against `model` (base -> {last, device}).
  template <typename Model, typename Visit>
  void CheckWalk(const Model& model, const char* bus, Visit visit) {
    auto it = model.begin();
    bool same = true;
    const size_t n = visit([&](const auto& range, const auto& device) {
      if (it == model.end() || range.base().value() != it->first ||
          range.last().value() != it->second.last ||
          IndexOf(&device) != it->second.device) {
        same = false;
        return;
      }
      ++it;
    });
    FUZZ_CHECK(same && it == model.end() && n == model.size(),
               std::string(bus) + " snapshot walk differs from the model");
  }

  void CheckState(bool master_copy = false) {
    const IoManagerStats st = manager_->stats();
    FUZZ_CHECK(st.pio_ranges == model_.pio.ranges.size(), "PIO range count");
    FUZZ_CHECK(st.mmio_ranges == model_.mmio.ranges.size(), "MMIO range count");
    // The published snapshot, whole and in order, equals the model: no range
    // missing, none extra (the lookups below find each model range, but not
    // a stale one left between them).
    CheckWalk(model_.pio.ranges, "PIO", [&](auto f) {
      return manager_->VisitPioRanges(f);
    });
    CheckWalk(model_.mmio.ranges, "MMIO", [&](auto f) {
      return manager_->VisitMmioRanges(f);
    });
    uint64_t got_base = 0, got_last = 0;
    int got_dev = -1;
    auto seen = [&](const auto& range, const auto& device) {
      got_base = range.base().value();
      got_last = range.last().value();
      got_dev = IndexOf(&device);
    };
    for (const auto& [base, e] : model_.pio.ranges) {
      got_dev = -1;
      const bool found =
          manager_->VisitPioDevice(PioAddress(uint16_t(e.last)), seen);
      FUZZ_CHECK(found && got_base == base && got_last == e.last &&
                     got_dev == e.device,
                 "PIO snapshot at " + Hex(base));
      if (!master_copy) continue;
      auto r = manager_->PioDevice(PioAddress(uint16_t(e.last)));
      FUZZ_CHECK(
          r && r->first.base().value() == base &&
              r->first.last().value() == e.last &&
              IndexOf(r->second.get()) == e.device,
          "PIO state at " + Hex(base));
    }
    for (const auto& [base, e] : model_.mmio.ranges) {
      got_dev = -1;
      const bool found = manager_->VisitMmioDevice(MmioAddress(e.last), seen);
      FUZZ_CHECK(found && got_base == base && got_last == e.last &&
                     got_dev == e.device,
                 "MMIO snapshot at " + Hex(base));
      if (!master_copy) continue;
      auto r = manager_->MmioDevice(MmioAddress(e.last));
      FUZZ_CHECK(
          r && r->first.base().value() == base &&
              r->first.last().value() == e.last &&
              IndexOf(r->second.get()) == e.device,
          "MMIO state at " + Hex(base));
    }
  }

  static const std::vector<std::shared_ptr<FuzzDevice>>& Devices() {
    static const auto* devices = [] {
      auto* v = new std::vector<std::shared_ptr<FuzzDevice>>;
      for (int i = 0; i < kDevices; ++i) {
        v->push_back(std::make_shared<FuzzDevice>(i));
      }
      return v;
    }();
    return *devices;
  }
  // Devices 4 and 5 behind kRules, as a PIO and as an MMIO device.
  static const std::vector<std::shared_ptr<DevicePio>>& PioRuled() {
    static const auto* v = [] {
      auto* r = new std::vector<std::shared_ptr<DevicePio>>;
      for (int i = 0; i < kRuled; ++i) {
        r->push_back(*PioWithAccessRules(Devices()[kDevices - kRuled + i],
                                         kRules[i]));
      }
      return r;
    }();
    return *v;
  }
  static const std::vector<std::shared_ptr<DeviceMmio>>& MmioRuled() {
    static const auto* v = [] {
      auto* r = new std::vector<std::shared_ptr<DeviceMmio>>;
      for (int i = 0; i < kRuled; ++i) {
        r->push_back(*MmioWithAccessRules(Devices()[kDevices - kRuled + i],
                                          kRules[i]));
      }
      return r;
    }();
    return *v;
  }
  const std::vector<std::shared_ptr<FuzzDevice>>& devices_;
  std::unique_ptr<IoManager> manager_;
  Model model_;
  int expected_dev_ = -1;
};

}  // namespace
}  // namespace vm_device

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vm_device::Input in(data, size);
  vm_device::Run run;
  for (int steps = 0; steps < 512 && !in.empty(); ++steps) run.Step(in);
  return 0;
}

#ifdef VM_DEVICE_FUZZ_REPLAY_MAIN
// Replays files (or every file of directories) given on the command line.
#include <filesystem>
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
  size_t files = 0;
  auto replay = [&](const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(f)),
                                  std::istreambuf_iterator<char>());
    std::printf("replay %s (%zu bytes)\n", p.c_str(), bytes.size());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()),
                           bytes.size());
    ++files;
  };
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p)) {
        if (e.is_regular_file()) replay(e.path());
      }
    } else {
      replay(p);
    }
  }
  vm_device::Run::LeakCheck();
  std::printf("%zu inputs replayed, no divergence\n", files);
  return files > 0 ? 0 : 1;
}
#endif
