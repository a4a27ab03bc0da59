// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: vm_device.h
// -----------------------------------------------------------------------------
//
// The whole public API in one include. vm_device routes guest port-I/O and
// MMIO accesses to emulated devices for a multi-vCPU hypervisor:
//
//   address.h        PioAddress, MmioAddress and their offset types
//   bus_range.h      BusRange<A> (PioRange, MmioRange): checked ranges
//   io_status.h      IoStatus: the result code of one dispatch
//   bus.h            Bus<A, D>: a map of disjoint ranges (single-threaded)
//   device.h         DevicePio / DeviceMmio, MutDevicePio / MutDeviceMmio
//   locked_device.h  LockedDevice<T>: a per-device lock for Mut devices
//   resources.h      Resource, ResourceConstraint, DeviceResources
//   io_manager.h     IoManager: wait-free dispatch, RCU-published registration
//   vcpu_thread.h    VcpuThread: explicit RCU reader registration, vCPU id
//   access_info.h    Device*WithInfo: handlers that see vCPU id and address
//   access_rules.h   per-range access sizes and alignment
//   doorbell.h       eventfd doorbells (ioeventfd in the userspace bus)
//   version.h        VM_DEVICE_VERSION_*, VersionString()

#ifndef VM_DEVICE_VM_DEVICE_H_
#define VM_DEVICE_VM_DEVICE_H_

#include "vm_device/access_info.h"    // IWYU pragma: export
#include "vm_device/access_rules.h"   // IWYU pragma: export
#include "vm_device/address.h"        // IWYU pragma: export
#include "vm_device/bus.h"            // IWYU pragma: export
#include "vm_device/bus_range.h"      // IWYU pragma: export
#include "vm_device/device.h"         // IWYU pragma: export
#include "vm_device/doorbell.h"       // IWYU pragma: export
#include "vm_device/io_manager.h"     // IWYU pragma: export
#include "vm_device/io_status.h"      // IWYU pragma: export
#include "vm_device/locked_device.h"  // IWYU pragma: export
#include "vm_device/resources.h"      // IWYU pragma: export
#include "vm_device/sharded_device.h" // IWYU pragma: export
#include "vm_device/vcpu_thread.h"    // IWYU pragma: export
#include "vm_device/version.h"        // IWYU pragma: export

#endif // VM_DEVICE_VM_DEVICE_H_
