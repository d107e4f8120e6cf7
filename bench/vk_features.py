#!/usr/bin/env python3
"""Which Vulkan device extensions that decide cubecl's fast paths each GPU offers.

cubecl's SPIR-V compiler uses cooperative matrices (tensor cores) only with
VK_KHR_cooperative_matrix, and lays out shared memory explicitly (the tiled matmul's fast
path) only with VK_KHR_workgroup_memory_explicit_layout. cubecl logs neither choice, so this asks
the Vulkan loader directly (ctypes, no vulkan-tools needed; the loader .deb that device-pack.sh
carries is enough). Usage: python3 bench/vk_features.py
"""
import ctypes
import ctypes.util
import sys

WANTED = [
    "VK_KHR_cooperative_matrix",
    "VK_KHR_workgroup_memory_explicit_layout",
    "VK_KHR_shader_float16_int8",
    "VK_KHR_16bit_storage",
    "VK_NV_cooperative_matrix2",
    "VK_KHR_shader_bfloat16",
]


class AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]


class InstanceInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.POINTER(AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


class ExtensionProperties(ctypes.Structure):
    _fields_ = [("extensionName", ctypes.c_char * 256), ("specVersion", ctypes.c_uint32)]


class DeviceProperties(ctypes.Structure):
    # Only the leading fields are read; the rest of VkPhysicalDeviceProperties is padding here.
    _fields_ = [("apiVersion", ctypes.c_uint32), ("driverVersion", ctypes.c_uint32), ("vendorID", ctypes.c_uint32),
                ("deviceID", ctypes.c_uint32), ("deviceType", ctypes.c_int), ("deviceName", ctypes.c_char * 256),
                ("rest", ctypes.c_byte * 1024)]


def main():
    name = ctypes.util.find_library("vulkan") or "libvulkan.so.1"
    try:
        vk = ctypes.CDLL(name)
    except OSError as e:
        print(f"no Vulkan loader ({e})")
        return 1
    app = AppInfo(0, None, b"segkit-vk-features", 1, b"segkit", 1, (1 << 22) | (3 << 12))
    info = InstanceInfo(1, None, 0, ctypes.pointer(app), 0, None, 0, None)
    instance = ctypes.c_void_p()
    rc = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if rc != 0:
        print(f"vkCreateInstance failed ({rc})")
        return 1
    count = ctypes.c_uint32()
    vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
    devices = (ctypes.c_void_p * count.value)()
    vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), devices)
    for dev in devices:
        props = DeviceProperties()
        vk.vkGetPhysicalDeviceProperties(ctypes.c_void_p(dev), ctypes.byref(props))
        n = ctypes.c_uint32()
        vk.vkEnumerateDeviceExtensionProperties(ctypes.c_void_p(dev), None, ctypes.byref(n), None)
        exts = (ExtensionProperties * n.value)()
        vk.vkEnumerateDeviceExtensionProperties(ctypes.c_void_p(dev), None, ctypes.byref(n), exts)
        have = {e.extensionName.decode() for e in exts}
        api = props.apiVersion
        print(f"{props.deviceName.decode()} (Vulkan {api >> 22}.{(api >> 12) & 0x3ff}, {n.value} extensions)")
        for w in WANTED:
            print(f"  {w}: {'yes' if w in have else 'no'}")
    vk.vkDestroyInstance(instance, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
