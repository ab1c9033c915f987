#!/usr/bin/env python3
"""Commits sequence numbers to a PostgreSQL table through CONNINFO, one at a time,
reconnecting on any error (2 s timeouts, as a client would), until killed. Prints
"ack N UNIX_MS" for every acknowledged commit and "err UNIX_MS" for every failed try
(flushed at once)."""
import sys
import time

import psycopg2

conninfo = sys.argv[1]
n = 0
conn = None
while True:
    try:
        if conn is None or conn.closed:
            conn = psycopg2.connect(conninfo, connect_timeout=2)
            conn.autocommit = True
            with conn.cursor() as c:
                c.execute("SET statement_timeout = 2000")
        with conn.cursor() as c:
            c.execute("INSERT INTO seq VALUES (%s) ON CONFLICT DO NOTHING", (n,))
        print(f"ack {n} {int(time.time() * 1000)}", flush=True)
        n += 1
        time.sleep(0.005)
    except Exception:  # noqa: BLE001 - any failure: reconnect and try the same number
        print(f"err {int(time.time() * 1000)}", flush=True)
        try:
            if conn is not None:
                conn.close()
        except Exception:  # noqa: BLE001
            pass
        conn = None
        time.sleep(0.02)
