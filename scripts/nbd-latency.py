#!/usr/bin/env python3
"""nbd-latency.py HOST PORT RAW_FILE [COUNT] [SEED]

Latency of random 4 KiB reads from an NBD export against reads of the same
offsets from a raw file (the backup restored), one request of each in turn
so that both see the same machine. Prints p50, p90, p99 and max of each in
microseconds, and their ratio.

The client is minimal and written here from the protocol document
(NetworkBlockDevice/nbd doc/proto.md): fixed newstyle handshake, NBD_OPT_GO
on the default (empty) export, then NBD_CMD_READ with simple replies, one
request in flight. Both sides pay Python's per-call cost, so the ratio
understates how much faster a pread is; the absolute NBD figures are what a
client one request deep sees.
"""
import os
import random
import socket
import struct
import sys
import time

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_INFO_EXPORT = 0
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
NBD_CMD_READ = 0
NBD_CMD_DISC = 2


def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            raise EOFError("the server closed the connection")
        out += got
    return bytes(out)


def connect(host, port):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = recv_exact(s, 18)
    if hello[:8] != NBDMAGIC or hello[8:16] != IHAVEOPT:
        raise ValueError("not a newstyle NBD server")
    (flags,) = struct.unpack(">H", hello[16:])
    if not flags & 1:
        raise ValueError("the server is not fixed newstyle")
    s.sendall(struct.pack(">I", 1 | (flags & 2)))  # FIXED_NEWSTYLE, NO_ZEROES if offered
    name = b""
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(IHAVEOPT + struct.pack(">II", NBD_OPT_GO, len(data)) + data)
    size = None
    while True:
        magic, opt, kind, length = struct.unpack(">QIII", recv_exact(s, 20))
        body = recv_exact(s, length)
        if magic != OPT_REPLY_MAGIC or opt != NBD_OPT_GO:
            raise ValueError("bad option reply")
        if kind == NBD_REP_INFO and length >= 12:
            info, = struct.unpack(">H", body[:2])
            if info == NBD_INFO_EXPORT:
                size, _ = struct.unpack(">QH", body[2:12])
        elif kind == NBD_REP_ACK:
            break
        elif kind & 0x80000000:
            raise ValueError(f"the server refused the export: {kind:#x} {body!r}")
    if size is None:
        raise ValueError("no export size in the reply")
    return s, size


def nbd_read(s, handle, offset, length):
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_READ, handle, offset, length))
    magic, error, got = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != SIMPLE_REPLY_MAGIC or got != handle or error:
        raise ValueError(f"bad reply: magic {magic:#x} error {error} handle {got}")
    return recv_exact(s, length)


def percentiles(xs):
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return at(0.5), at(0.9), at(0.99), xs[-1]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    host, port, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    s, size = connect(host, port)
    fd = os.open(raw, os.O_RDONLY)
    if os.fstat(fd).st_size != size:
        sys.exit(f"{raw} is {os.fstat(fd).st_size} bytes, the export {size}")
    rng = random.Random(seed)
    nbd, local = [], []
    for handle in range(count):
        offset = rng.randrange(size // 4096) * 4096
        t0 = time.perf_counter_ns()
        a = nbd_read(s, handle, offset, 4096)
        t1 = time.perf_counter_ns()
        b = os.pread(fd, 4096, offset)
        t2 = time.perf_counter_ns()
        if a != b:
            sys.exit(f"the export and {raw} differ at {offset}")
        nbd.append((t1 - t0) / 1000)
        local.append((t2 - t1) / 1000)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_DISC, count, 0, 0))
    s.close()
    pn, pl = percentiles(nbd), percentiles(local)
    print(f"random 4 KiB reads: {count}, seed {seed}, all equal to {raw}")
    print(f"{'':8} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}  (microseconds)")
    print(f"{'nbd':8} " + " ".join(f"{x:9.1f}" for x in pn))
    print(f"{'pread':8} " + " ".join(f"{x:9.1f}" for x in pl))
    print(f"{'ratio':8} " + " ".join(f"{a / b:9.2f}" for a, b in zip(pn, pl)))


if __name__ == "__main__":
    main()
