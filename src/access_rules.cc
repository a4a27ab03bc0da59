// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Per-range access rules (access_rules.h): validation and the ruled device.

#include "vm_device/access_rules.h"

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "src/internal/range_hook.h"

namespace vm_device {
namespace {

template <typename Hook, typename D>
absl::StatusOr<std::shared_ptr<D>> WithRules(std::shared_ptr<D> device,
                                             const AccessRules& rules,
                                             const char* what) {
  if (device == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": null device"));
  }
  if (absl::Status s = ValidateAccessRules(rules); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  }
  internal::HookConfig config;
  std::shared_ptr<D> inner = device;
  if (const Hook* hook = internal::AsHook(*device)) {
    // Rules on a doorbell (or new rules on a ruled device): one hook.
    config = hook->config();
    inner = hook->device();
  }
  config.has_rules = true;
  config.min_size = rules.min_size;
  config.max_size = rules.max_size;
  config.alignment = rules.alignment;
  config.natural_alignment = rules.natural_alignment;
  return std::shared_ptr<D>(
      std::make_shared<Hook>(std::move(config), std::move(inner)));
}

}  // namespace

absl::Status ValidateAccessRules(const AccessRules& rules) {
  if (rules.min_size == 0) {
    return absl::InvalidArgumentError(
        "access rules: min_size is 0 (an access is at least 1 byte)");
  }
  if (rules.max_size != 0 && rules.max_size < rules.min_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("access rules: max_size ", rules.max_size,
                     " is below min_size ", rules.min_size));
  }
  if (rules.alignment == 0 || (rules.alignment & (rules.alignment - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("access rules: alignment ", rules.alignment,
                     " is not a power of two"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<DevicePio>> PioWithAccessRules(
    std::shared_ptr<DevicePio> device, const AccessRules& rules) {
  return WithRules<internal::PioHook>(std::move(device), rules,
                                      "PioWithAccessRules");
}

absl::StatusOr<std::shared_ptr<DeviceMmio>> MmioWithAccessRules(
    std::shared_ptr<DeviceMmio> device, const AccessRules& rules) {
  return WithRules<internal::MmioHook>(std::move(device), rules,
                                       "MmioWithAccessRules");
}

}  // namespace vm_device
