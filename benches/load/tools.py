#!/usr/bin/env python3
"""Helpers for benches/load/run.sh: process accounting, idle connections, wrk output parsing.

  tools.py tree PID           PID and its descendants
  tools.py cpu PID            CPU ticks (utime+stime) of PID and its descendants
  tools.py mem PID FIELD      sum of /proc/*/status FIELD (VmRSS, VmHWM) in KiB over the tree
  tools.py idle PID MODE ADDR TARGET N
                              open N client connections to ADDR, leave them idle, print the
                              KiB of RSS each one costs the process tree of PID:
                                forward  one absolute-form GET http://TARGET/ each, then idle
                                reverse  one origin-form GET / each, then idle
                                tunnel   CONNECT TARGET each, 200 read, then idle
  tools.py wrk FILE           requests, req/s, p50 ms, p99 ms, errors from `wrk --latency` output
"""

import os
import re
import socket
import sys
import time


def tree(root):
    """root and all its descendants (squid and nginx fork workers)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [int(root)]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(root):
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def mem_kib(root, field):
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def read_response(s, want_body):
    """Read one response head (and a Content-Length body when asked)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("closed before the response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.split(b" ", 2)[1].startswith(b"2"):
        raise OSError("status " + head.split(b"\r\n")[0].decode(errors="replace"))
    if want_body:
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed mid-body")
            rest += chunk


def idle(root, mode, addr, target, n):
    host, port = addr.rsplit(":", 1)
    if mode == "forward":
        req = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    elif mode == "reverse":
        req = f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    else:
        req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    before = mem_kib(root, "VmRSS")
    socks, errors = [], 0
    for _ in range(n):
        try:
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(req)
            read_response(s, want_body=(mode != "tunnel"))
            socks.append(s)
        except OSError:
            errors += 1
    time.sleep(1.0)  # let the proxy settle (buffers released, tasks parked)
    after = mem_kib(root, "VmRSS")
    held = len(socks)
    for s in socks:
        s.close()
    per = (after - before) / held if held else float("nan")
    print(f"{per:.1f} {held} {errors}")


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS_MS[m.group(2)] if m else float("nan")


def wrk(path):
    out = open(path).read()
    reqs = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    print(
        reqs.group(1) if reqs else 0,
        rate.group(1) if rate else 0,
        f"{to_ms(p50.group(1)):.2f}" if p50 else "nan",
        f"{to_ms(p99.group(1)):.2f}" if p99 else "nan",
        errors,
    )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "cpu":
        print(cpu_ticks(args[0]))
    elif cmd == "tree":
        print(*tree(args[0]))
    elif cmd == "mem":
        print(mem_kib(args[0], args[1]))
    elif cmd == "idle":
        idle(args[0], args[1], args[2], args[3], int(args[4]))
    elif cmd == "wrk":
        wrk(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
