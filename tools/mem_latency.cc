// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// tools/mem_latency: the latency of one dependent load against the size of
// the memory it walks, to see where a machine's cache levels end (README,
// "Results of this revision", quotes it for the 2-vCPU VM).
//
//   bazel run //tools:mem_latency [-- SIZE_KIB ...]
//
// For each size, a random cyclic permutation of 64-byte lines is walked by
// pointer chasing (each load's address is the previous load's value, so no
// two loads overlap), after a warm-up quarter; prints ns per load. Default
// sizes: 16 KiB to 256 MiB. Single-threaded; run it on an idle machine.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

namespace {

struct alignas(64) Line {
  const Line* next;
  char pad[64 - sizeof(const Line*)];
};

double NsPerLoad(size_t kib) {
  const size_t n = std::max<size_t>(2, kib * 1024 / sizeof(Line));
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(kib));
  std::vector<Line> lines(n);
  for (size_t i = 0; i < n; ++i)
    lines[order[i]].next = &lines[order[(i + 1) % n]];
  constexpr size_t kLoads = 2000000;
  const Line* p = &lines[order[0]];
  for (size_t i = 0; i < kLoads / 4; ++i) p = p->next;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < kLoads; ++i) p = p->next;
  const auto t1 = std::chrono::steady_clock::now();
  // Keeps the walk: its end is printed nowhere but must be computed.
  if (p == nullptr) std::abort();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / kLoads;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes;
  for (int i = 1; i < argc; ++i) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(argv[i], &end, 10);
    if (*end != '\0' || v == 0 || v > (size_t{1} << 24)) {
      std::fprintf(stderr, "mem_latency: bad size in KiB: '%s'\n", argv[i]);
      return 2;
    }
    sizes.push_back(static_cast<size_t>(v));
  }
  if (sizes.empty()) {
    sizes = {16, 256, 768, 1536, 4096, 16384, 65536, 262144};
  }
  for (size_t kib : sizes) {
    std::printf("%9zu KiB: %6.1f ns per dependent load\n", kib, NsPerLoad(kib));
  }
  return 0;
}
