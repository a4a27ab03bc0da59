# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Compiler flags shared by every vm_device target."""

VM_DEVICE_DEFAULT_COPTS = [
    "-Wall",
    "-Wextra",
    "-Wcast-qual",
    "-Wnon-virtual-dtor",
    "-Wvla",
    "-Wno-missing-field-initializers",
]

VM_DEVICE_TEST_COPTS = VM_DEVICE_DEFAULT_COPTS + [
    "-Wno-sign-compare",
]
