"""GETs at a steady rate, each on its own connection and thread, for tests that must run
their client inside a network namespace. Prints one JSON object: every request's start and
duration (seconds from the load's start), its status ("ERR" when none) and the start of
its body.

usage: load.py HOST PORT RATE SECONDS TIMEOUT [PATH]   (PATH: "/" unless given)"""
import json
import socket
import sys
import threading
import time

host, port = sys.argv[1], int(sys.argv[2])
rate, secs, patience = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
path = sys.argv[6] if len(sys.argv) > 6 else "/"
results = []
lock = threading.Lock()


def one(t0):
    start = time.monotonic()
    code, body = "ERR", ""
    try:
        s = socket.create_connection((host, port), timeout=patience)
        s.settimeout(max(0.01, patience - (time.monotonic() - start)))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" % path.encode())
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()
        code = buf[9:12].decode(errors="replace")
        body = buf.split(b"\r\n\r\n", 1)[-1][:120].decode(errors="replace").strip()
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        body = str(e)[:120]
    with lock:
        results.append([start - t0, time.monotonic() - start, code, body])


t0 = time.monotonic()
threads = []
for i in range(int(rate * secs)):
    wait = t0 + i / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    t = threading.Thread(target=one, args=(t0,))
    t.start()
    threads.append(t)
for t in threads:
    t.join()
results.sort()
print(json.dumps(results))
