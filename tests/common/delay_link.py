"""Delays every Ethernet frame between two TAP devices by a fixed time: `tc netem delay` for
kernels without sch_netem. Run in the namespace where the taps are to appear:

    delay_link.py TAP_A TAP_B DELAY_MS

Creates both taps, prints "ready", then forwards frames both ways, each DELAY_MS after it
came, until killed (the taps go with it). Bridging TAP_A to one side of a link and TAP_B to
the other puts the delay on that link.
"""

import fcntl
import heapq
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    a, b = open_tap(sys.argv[1]), open_tap(sys.argv[2])
    delay = float(sys.argv[3]) / 1e3
    other = {a: b, b: a}
    due = []  # (when to write, arrival order, where to, frame): a heap, earliest first
    seq = 0
    print("ready", flush=True)
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                heapq.heappush(due, (now + delay, seq, other[fd], frame))
                seq += 1
        while due and due[0][0] <= time.monotonic():
            _, _, fd, frame = heapq.heappop(due)
            try:
                os.write(fd, frame)
            except OSError:
                pass  # a tap that is down drops the frame, as a cut link would


main()
