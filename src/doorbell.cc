// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Doorbells (doorbell.h): validating the eventfd and the match, and the hook.

#include "vm_device/doorbell.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "src/internal/range_hook.h"

namespace vm_device {
namespace {

// A duplicate of `fd`, checked to be an eventfd.
absl::StatusOr<std::shared_ptr<const internal::OwnedFd>> DupEventFd(
    int fd, const char* what) {
  if (fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": eventfd ", fd, " is not a file descriptor"));
  }
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": eventfd ", fd, " is not an open file descriptor (",
        std::strerror(errno), ")"));
  }
  auto owned = std::make_shared<const internal::OwnedFd>(dup);
  // Linux names an eventfd's file "anon_inode:[eventfd]". Where /proc is
  // not mounted the check is skipped.
  char target[64] = {};
  const std::string link = absl::StrCat("/proc/self/fd/", dup);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n >= 0 && std::string(target, n) != "anon_inode:[eventfd]") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": file descriptor ", fd,
                     " is not an eventfd (it is ", std::string(target, n),
                     ")"));
  }
  return owned;
}

absl::Status ValidateMatch(const DoorbellMatch& match, const char* what) {
  if (match.size > 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": match size ", match.size, " is above 8 bytes"));
  }
  if (!match.value.has_value()) return absl::OkStatus();
  const uint32_t s = match.size;
  if (s != 1 && s != 2 && s != 4 && s != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": a match value needs a match size of 1, 2, 4 or 8, not ", s));
  }
  if (s < 8 && (*match.value >> (8 * s)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": match value 0x", absl::Hex(*match.value),
                     " does not fit in ", s, " bytes"));
  }
  return absl::OkStatus();
}

template <typename Hook, typename D>
absl::StatusOr<std::shared_ptr<D>> Make(int eventfd,
                                        const DoorbellMatch& match,
                                        std::shared_ptr<D> fallback,
                                        const char* what) {
  if (absl::Status s = ValidateMatch(match, what); !s.ok()) return s;
  absl::StatusOr<std::shared_ptr<const internal::OwnedFd>> fd =
      DupEventFd(eventfd, what);
  if (!fd.ok()) return fd.status();
  internal::HookConfig config;
  config.eventfd = *std::move(fd);
  config.match_size = match.size;
  config.match_value = match.value.has_value();
  config.value = match.value.value_or(0);
  config.any_offset = match.any_offset;
  return std::shared_ptr<D>(
      std::make_shared<Hook>(std::move(config), std::move(fallback)));
}

}  // namespace

absl::StatusOr<std::shared_ptr<DevicePio>> MakePioDoorbell(
    int eventfd, const DoorbellMatch& match,
    std::shared_ptr<DevicePio> fallback) {
  return Make<internal::PioHook>(eventfd, match, std::move(fallback),
                                 "MakePioDoorbell");
}

absl::StatusOr<std::shared_ptr<DeviceMmio>> MakeMmioDoorbell(
    int eventfd, const DoorbellMatch& match,
    std::shared_ptr<DeviceMmio> fallback) {
  return Make<internal::MmioHook>(eventfd, match, std::move(fallback),
                                  "MakeMmioDoorbell");
}

}  // namespace vm_device
