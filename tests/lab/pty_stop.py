#!/usr/bin/env python3
"""Runs a VMM on a pseudo-terminal and stops it the way a user would
(tests/lab/steps/debian_stop_*.sh).

    pty_stop.py HOW READY CONSOLE -- COMMAND...

HOW is `sigterm` (kill(2) with SIGTERM) or `ctrl-a-x` (typed on the
terminal). Once the console shows the line READY, the VMM's thread count
is taken and it is stopped; the script then waits up to 60 s for it to
end. The whole console goes to the file CONSOLE. Prints key=value lines:
status (the exit status as the shell would show it, 128+N for signal N),
stop_secs (from the stop to the exit), threads (while the guest ran), raw
(the terminal was in raw mode while the guest ran), restored (its
settings after the exit equal those before), leftovers (processes of the
VMM's session still there after it ended).
"""
import os
import pty
import select
import signal
import sys
import termios
import time

how, ready, console_path = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
argv = sys.argv[sys.argv.index("--") + 1:]

pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
before = termios.tcgetattr(fd)
out = b""


def pump(timeout):
    global out
    r, _, _ = select.select([fd], [], [], timeout)
    if r:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        out += data
    return True


deadline = time.time() + 600
status = None
while ready not in out and time.time() < deadline:
    if not pump(0.2):
        break
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        status = st
        break
raw = not (termios.tcgetattr(fd)[3] & termios.ICANON)
threads = len(os.listdir(f"/proc/{pid}/task")) if status is None else 0
seen = ready in out
stop_at = time.time()
if status is None and seen:
    if how == "sigterm":
        os.kill(pid, signal.SIGTERM)
    else:
        os.write(fd, b"\x01x")
end = time.time() + 60
while status is None and time.time() < end:
    pump(0.1)
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        status = st
stop_secs = time.time() - stop_at
if status is None:
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    print("killed=1")
while pump(0.05):
    pass
after = termios.tcgetattr(fd)
leftovers = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            if os.getsid(int(p)) == pid:
                leftovers.append(p)
        except OSError:
            pass
with open(console_path, "wb") as f:
    f.write(out)
code = os.waitstatus_to_exitcode(status)
print(f"ready_seen={int(seen)}")
print(f"status={code if code >= 0 else 128 - code}")
print(f"stop_secs={stop_secs:.2f}")
print(f"threads={threads}")
print(f"raw={int(raw)}")
print(f"restored={int(before == after)}")
print(f"leftovers={','.join(leftovers) or 'none'}")
