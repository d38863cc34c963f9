#!/usr/bin/env python3
"""delay-proxy.py PORT UPSTREAM_PORT DELAY_MS [COUNT_FILE]

An HTTP/1.1 proxy on 127.0.0.1:PORT to 127.0.0.1:UPSTREAM_PORT that holds
every request DELAY_MS milliseconds before passing it on, as an endpoint
that far away would. Connections are kept alive (each client connection
gets its own upstream connection), so a tool that reuses connections pays
the delay once per request, not a handshake too: the benchmarks compare
tools, and neither should pay for the proxy.

Bodies are passed by Content-Length or chunked transfer encoding, both
ways. On SIGTERM or SIGINT it writes the number of requests it passed, per
method, to COUNT_FILE (if given) and exits; on SIGUSR1 it writes them
without exiting.

Used by scripts/bench-s3-read.sh; loopback only.
"""

import asyncio
import json
import signal
import sys
from collections import Counter

COUNTS = Counter()


async def read_head(reader):
    """The request or status line and headers, or None at end of stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    return head


def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


async def pass_body(head, reader, writer, is_response, request_method):
    """Copies the message body that follows `head` from reader to writer."""
    status = None
    if is_response:
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            status = 0
        if request_method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            return
    te = header(head, b"transfer-encoding")
    if te is not None and b"chunked" in te.lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers, then the blank line.
                while True:
                    t = await reader.readuntil(b"\r\n")
                    writer.write(t)
                    if t == b"\r\n":
                        return
            data = await reader.readexactly(size + 2)
            writer.write(data)
            await writer.drain()
    length = header(head, b"content-length")
    if length is not None:
        left = int(length)
        while left > 0:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise ConnectionError("body cut short")
            writer.write(data)
            left -= len(data)
            await writer.drain()
        return
    if is_response:
        # No length: the body runs to the end of the connection.
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            writer.write(data)
            await writer.drain()


async def serve(client_r, client_w, upstream_port, delay):
    up_r = up_w = None
    try:
        while True:
            try:
                head = await read_head(client_r)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            method = head.split(b" ", 1)[0]
            COUNTS[method.decode("latin-1")] += 1
            await asyncio.sleep(delay)
            if up_w is None:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
            up_w.write(head)
            # A client waiting for "100 Continue" sends the body after it.
            expect = header(head, b"expect")
            if expect is None:
                await pass_body(head, client_r, up_w, False, method)
            await up_w.drain()
            while True:
                resp = await read_head(up_r)
                client_w.write(resp)
                if resp.split(b" ", 2)[1:2] == [b"100"]:
                    await client_w.drain()
                    await pass_body(head, client_r, up_w, False, method)
                    await up_w.drain()
                    continue
                break
            await pass_body(resp, up_r, client_w, True, method)
            await client_w.drain()
            if (header(resp, b"connection") or b"").lower() == b"close":
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        for w in (client_w, up_w):
            if w is not None:
                w.close()


def write_counts(path):
    if path:
        with open(path, "w") as f:
            json.dump(dict(COUNTS, total=sum(COUNTS.values())), f)


async def main():
    port, upstream, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    count_file = sys.argv[4] if len(sys.argv) > 4 else None
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, upstream, delay_ms / 1000.0), "127.0.0.1", port
    )
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGUSR1, lambda: write_counts(count_file))
    async with server:
        await stop
    write_counts(count_file)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    asyncio.run(main())
