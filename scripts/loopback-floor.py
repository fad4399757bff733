#!/usr/bin/env python3
"""The kernel's own CPU for HTTP-sized requests and their answers over loopback TCP.

A sender writes requests of SIZE bytes, BATCH at a time, to a receiver on 127.0.0.1 that
answers each with a 38-byte HTTP answer once the batch has arrived; the sender waits for
the answers before writing the next batch. Prints the sender's system and user CPU per
request. With BATCH 1 this is what one webhook call costs the kernel on the job's side
(a write of the request, a read of its answer, the wake-ups between), whatever the
client: the floor under the job's CPU per webhook call (README, "Status").

    python3 scripts/loopback-floor.py [REQUESTS] [SIZE] [BATCH ...]
    python3 scripts/loopback-floor.py 48000 15000 1 4 16
"""
import os
import resource
import socket
import sys

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


BUFFER = bytearray(1 << 20)


def receive(conn, n):
    # Into one buffer: a `recv` of a new 1 MiB object each time costs the kernel more
    # (fresh pages) than the socket does.
    got = 0
    while got < n:
        k = conn.recv_into(BUFFER)
        if k == 0:
            raise SystemExit("the other side closed")
        got += k


def run(requests, size, batch):
    rounds = requests // batch
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    pid = os.fork()
    if pid == 0:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            receive(conn, size * batch)
            conn.sendall(ANSWER * batch)
        os._exit(0)
    sender = socket.create_connection(server.getsockname())
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b"x" * (size * batch)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(rounds):
        sender.sendall(body)
        receive(sender, len(ANSWER) * batch)
    after = resource.getrusage(resource.RUSAGE_SELF)
    os.waitpid(pid, 0)
    n = rounds * batch
    sys_us = 1e6 * (after.ru_stime - before.ru_stime) / n
    user_us = 1e6 * (after.ru_utime - before.ru_utime) / n
    print(f"{size} B requests, {batch} a write: sender system CPU {sys_us:.1f} us "
          f"a request, user {user_us:.1f} us")


def main():
    args = [int(a) for a in sys.argv[1:]]
    requests = args[0] if args else 48000
    size = args[1] if len(args) > 1 else 15000
    for batch in args[2:] or [1, 4]:
        run(requests, size, batch)


if __name__ == "__main__":
    main()
