#!/usr/bin/env python3
"""L1's side of the lab's TCP transfer (tests/lab/steps/test_kernel_network.sh).

    tcp_peer.py ADDRESS MIB REPORT

Listens on ADDRESS:5001 and ADDRESS:5002. To the first connection on 5001
it sends MIB MiB of deterministic pseudo-random bytes and closes; from the
first connection on 5002 it reads exactly MIB MiB and closes. REPORT gets
`listening`, then `down_md5=`/`down_bytes=` (what was sent) and
`up_md5=`/`up_bytes=` (what was received) lines. Gives up after 900 s.
"""
import hashlib
import random
import socket
import sys
import threading

addr, mib, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
total = mib << 20
lines = []
lock = threading.Lock()


def note(line):
    with lock:
        lines.append(line)
        with open(report, "w") as f:
            f.write("\n".join(lines) + "\n")


def listener(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(900)
    return s


def send_down(s):
    c, _ = s.accept()
    rng = random.Random(12345)
    h, sent = hashlib.md5(), 0
    while sent < total:
        chunk = rng.randbytes(min(1 << 20, total - sent))
        c.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
    c.close()
    note(f"down_md5={h.hexdigest()}")
    note(f"down_bytes={sent}")


def receive_up(s):
    c, _ = s.accept()
    c.settimeout(600)
    h, got = hashlib.md5(), 0
    while got < total:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    c.close()
    note(f"up_md5={h.hexdigest()}")
    note(f"up_bytes={got}")


down, up = listener(5001), listener(5002)
note("listening")
threads = [threading.Thread(target=send_down, args=(down,)), threading.Thread(target=receive_up, args=(up,))]
for t in threads:
    t.start()
for t in threads:
    t.join()
