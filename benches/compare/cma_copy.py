#!/usr/bin/env python3
"""How fast this host copies out of another process (process_vm_readv, the single-copy
mechanism), beside memmove: one child holds 32 MiB, the parent reads it in blocks.

    python3 benches/compare/cma_copy.py
"""
import ctypes
import os
import time

libc = ctypes.CDLL(None, use_errno=True)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


N, REPS = 32 << 20, 3
src = ctypes.create_string_buffer(b"x" * N, N)
r, w = os.pipe()
holder = os.fork()
if holder == 0:
    os.write(w, str(ctypes.addressof(src)).encode().ljust(32))
    time.sleep(60)
    os._exit(0)
try:
    addr = int(os.read(r, 32))
    for block in [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]:
        dst = ctypes.create_string_buffer(block)
        local = IoVec(ctypes.addressof(dst), block)
        start, total = time.perf_counter(), 0
        for _ in range(REPS):
            for off in range(0, N, block):
                remote = IoVec(addr + off, block)
                got = libc.process_vm_readv(holder, ctypes.byref(local), 1,
                                            ctypes.byref(remote), 1, 0)
                if got < 0:
                    raise OSError(ctypes.get_errno(), "process_vm_readv")
                total += got
        took = time.perf_counter() - start
        calls = REPS * N // block
        print(f"process_vm_readv {block >> 10:>5} KiB blocks: {total / took / 1e9:5.2f} GB/s, "
              f"{took / calls * 1e6:6.1f} us per call")
    dst = ctypes.create_string_buffer(N)
    start = time.perf_counter()
    for _ in range(REPS):
        ctypes.memmove(dst, src, N)
    print(f"memmove 32 MiB: {REPS * N / (time.perf_counter() - start) / 1e9:5.2f} GB/s")
finally:
    os.kill(holder, 9)
    os.waitpid(holder, 0)
