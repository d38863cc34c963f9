#!/usr/bin/env python3
"""Random reads of a backup through vhdkit's C ABI, from Python's ctypes,
compared byte for byte with a raw image of the same disk (qemu-img's view,
in tests/capi_languages.rs).

usage: random_reads.py LIBVHDKIT STORE SPEC RAW [COUNT] [SEED]
"""
import ctypes
import random
import sys

VHDKIT_OK = 0


class Vhdkit:
    """The few functions this script calls, with their C signatures."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        p, c, u64, i32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int32
        err = ctypes.POINTER(ctypes.c_void_p)
        sig = {
            "vhdkit_abi_version": ([], ctypes.c_uint32),
            "vhdkit_store_open": ([c, c, ctypes.POINTER(p), err], i32),
            "vhdkit_store_free": ([p], None),
            "vhdkit_reader_open": ([p, c, c, ctypes.POINTER(p), err], i32),
            "vhdkit_reader_free": ([p], None),
            "vhdkit_reader_size": ([p, ctypes.POINTER(u64), err], i32),
            "vhdkit_reader_read_at": ([p, u64, ctypes.c_char_p, ctypes.c_size_t, err], i32),
            "vhdkit_error_message": ([p], c),
            "vhdkit_error_free": ([p], None),
        }
        for name, (args, ret) in sig.items():
            f = getattr(lib, name)
            f.argtypes, f.restype = args, ret
        self.lib = lib

    def check(self, status, err):
        """Raises with vhdkit's message unless the call succeeded."""
        if status != VHDKIT_OK:
            message = self.lib.vhdkit_error_message(err).decode()
            self.lib.vhdkit_error_free(err)
            raise RuntimeError(f"vhdkit status {status}: {message}")

    def call(self, name, *args):
        err = ctypes.c_void_p()
        self.check(getattr(self.lib, name)(*args, ctypes.byref(err)), err)


def main():
    lib_path, store_path, spec, raw_path = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    seed = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    vk = Vhdkit(lib_path)
    if vk.lib.vhdkit_abi_version() >> 16 != 1:
        raise SystemExit("unexpected ABI major version")
    store, reader, size = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint64()
    vk.call("vhdkit_store_open", store_path.encode(), None, ctypes.byref(store))
    vk.call("vhdkit_reader_open", store, spec.encode(), None, ctypes.byref(reader))
    vk.call("vhdkit_reader_size", reader, ctypes.byref(size))
    rng = random.Random(seed)
    with open(raw_path, "rb") as raw:
        raw.seek(0, 2)
        if raw.tell() != size.value:
            raise SystemExit(f"sizes differ: reader {size.value}, raw {raw.tell()}")
        for i in range(count):
            length = rng.choice([1, 512, 4096, 4096, 65536, rng.randrange(1, 1 << 20)])
            offset = rng.randrange(0, size.value - length + 1)
            if i % 4 == 0:  # sector-aligned, as a file system reads
                offset -= offset % 4096
            buf = ctypes.create_string_buffer(length)
            vk.call("vhdkit_reader_read_at", reader, offset, buf, length)
            raw.seek(offset)
            if buf.raw != raw.read(length):
                raise SystemExit(f"read {i}: {length} bytes at {offset} differ from the raw image")
    # A read past the end is refused, not short.
    buf = ctypes.create_string_buffer(16)
    err = ctypes.c_void_p()
    status = vk.lib.vhdkit_reader_read_at(reader, size.value - 8, buf, 16, ctypes.byref(err))
    if status == VHDKIT_OK:
        raise SystemExit("a read past the end succeeded")
    vk.lib.vhdkit_error_free(err)
    vk.lib.vhdkit_reader_free(reader)
    vk.lib.vhdkit_store_free(store)
    print(f"PYTHON READS OK: {count} random reads equal the raw image")


if __name__ == "__main__":
    main()
