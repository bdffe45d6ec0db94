#!/usr/bin/env python3
"""Host end of the real-VMM TCP transfers (runs inside the test's netns).

usage: tcp_peer.py ADDR SINK_PORT SRC_PORT MIB REP LOG [CTL_PORT]

  SINK_PORT: each connection is read to EOF; its byte count and sha256 are
             checked against REP copies of the deterministic payload
             (payload.py MIB) and logged:  sink n=I bytes=B ok=0|1 ms=T
  SRC_PORT:  each connection is sent REP copies of the payload, then closed:
             source n=I bytes=B ok=0|1 ms=T
  CTL_PORT:  each connection gets "stop" if the file LOG.stop exists, else
             "run" (how the host ends the guest's chaos phase)
"""
import hashlib
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import payload  # noqa: E402

addr, sink_port, src_port, mib, rep, log_path = sys.argv[1:7]
ctl_port = sys.argv[7] if len(sys.argv) > 7 else None
DATA = payload.payload(int(mib))
REP = int(rep)
h = hashlib.sha256()
for _ in range(REP):
    h.update(DATA)
WANT_SHA, WANT_LEN = h.hexdigest(), len(DATA) * REP
lock = threading.Lock()
log = open(log_path, "a", buffering=1)


def emit(line):
    with lock:
        log.write(line + "\n")


def listener(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(8)
    return s


def sink_conn(c, n):
    t0 = time.monotonic()
    hh, total = hashlib.sha256(), 0
    try:
        c.settimeout(300)
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            hh.update(b)
            total += len(b)
        ok = total == WANT_LEN and hh.hexdigest() == WANT_SHA
        emit(f"sink n={n} bytes={total} ok={int(ok)} ms={int((time.monotonic() - t0) * 1000)}")
    except OSError as e:
        emit(f"sink n={n} bytes={total} ok=0 error={e!r}")
    finally:
        c.close()


def source_conn(c, n):
    t0 = time.monotonic()
    sent = 0
    try:
        c.settimeout(300)
        for _ in range(REP):
            c.sendall(DATA)
            sent += len(DATA)
        c.shutdown(socket.SHUT_WR)
        # wait for the guest to close its side (it has read everything)
        while c.recv(4096):
            pass
        emit(f"source n={n} bytes={sent} ok=1 ms={int((time.monotonic() - t0) * 1000)}")
    except OSError as e:
        emit(f"source n={n} bytes={sent} ok=0 error={e!r}")
    finally:
        c.close()


def serve(sock, fn):
    n = 0
    while True:
        c, _ = sock.accept()
        n += 1
        threading.Thread(target=fn, args=(c, n), daemon=True).start()


def ctl_conn(c, n):
    try:
        c.sendall(b"stop\n" if os.path.exists(log_path + ".stop") else b"run\n")
    except OSError:
        pass
    finally:
        c.close()


sink, src = listener(sink_port), listener(src_port)
emit(f"ready sha={WANT_SHA} bytes={WANT_LEN}")
threading.Thread(target=serve, args=(sink, sink_conn), daemon=True).start()
if ctl_port:
    threading.Thread(target=serve, args=(listener(ctl_port), ctl_conn), daemon=True).start()
serve(src, source_conn)
