// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The version header and the library binary agree, and the string is the
// three numbers joined by dots.

#include "vm_device/version.h"

#include <string>

#include "gtest/gtest.h"

namespace {

TEST(Version, StringIsMajorMinorPatch) {
  const std::string expected = std::to_string(VM_DEVICE_VERSION_MAJOR) + "." +
                               std::to_string(VM_DEVICE_VERSION_MINOR) + "." +
                               std::to_string(VM_DEVICE_VERSION_PATCH);
  EXPECT_EQ(VM_DEVICE_VERSION_STRING, expected);
}

TEST(Version, LibraryMatchesHeader) {
  EXPECT_EQ(std::string(vm_device::VersionString()), VM_DEVICE_VERSION_STRING);
}

}  // namespace
