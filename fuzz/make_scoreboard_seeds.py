#!/usr/bin/env python3
"""Writes the seed corpus of scoreboard_fuzz (fuzz/corpus/scoreboard/).

The layout is lib/worker/include/corral/protocol.h's: a 1024-byte header, then
64-byte slots, native (little-endian) byte order. Run from anywhere:
    python3 fuzz/make_scoreboard_seeds.py
"""
import os
import struct

HEADER_SIZE = 1024
SLOT_SIZE = 64
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "scoreboard")


def header(slot_count, *, magic=b"CORRALSB", version=1, header_size=HEADER_SIZE,
           slot_size=SLOT_SIZE, pid=4242, generation=3, started=1_700_000_000_000_000_000,
           mode=0, job_state=0, retry_at=0, min_spare=2, max_spare=8, max_workers=64,
           updated=123_456_789, job=b"web", listeners=b"127.0.0.1:8080\nunix:/run/web.sock",
           max_requests=0, idle_hint=2):
    h = bytearray(HEADER_SIZE)
    struct.pack_into("<8sIIIIiIQIIQIIIIQ", h, 0, magic, version, header_size, slot_size,
                     slot_count, pid, generation, started, mode, job_state, retry_at,
                     min_spare, max_spare, max_workers, 0, updated)
    h[80:80 + len(job)] = job
    h[144:144 + len(listeners)] = listeners
    struct.pack_into("<Q", h, 912, max_requests)
    struct.pack_into("<i", h, 960, idle_hint)
    return bytes(h)


def slot(state, pid, generation=3, lock=0, requests=0, state_since=100, lock_since=100,
         spawned=50):
    s = bytearray(SLOT_SIZE)
    struct.pack_into("<IiIIQQQQ", s, 0, state, pid, generation, lock, requests, state_since,
                     lock_since, spawned)
    return bytes(s)


def main():
    os.makedirs(OUT, exist_ok=True)
    slots = [slot(2, 1001, lock=2, requests=17), slot(3, 1002, requests=5), slot(1, 1003),
             slot(4, 1004, generation=2), slot(0, 0), slot(5, 1005)]
    seeds = {
        # What a running prefork supervisor writes.
        "valid": header(len(slots)) + b"".join(slots),
        "valid-inetd-backing-off": header(2, mode=1, job_state=1, retry_at=2**63, job=b"legacy",
                                          listeners=b":7000") + slot(5, 77) + slot(0, 0),
        "no-slots": header(0),
        # Scribbled-over slots: unknown states and lock words, negative pids, clocks
        # in the future.
        "garbage-slots": header(4) + slot(99, -1, lock=7, state_since=2**64 - 1)
        + slot(0xFFFFFFFF, -2**31, generation=2**32 - 1, lock=2**32 - 1, requests=2**64 - 1)
        + slot(3, 2**31 - 1, lock=1) + bytes([0xFF]) * SLOT_SIZE,
        # Header text without terminators, not UTF-8.
        "unterminated-text": header(1, job=b"\xff" * 64, listeners=b"\xc3\x28\n" * 256,
                                    mode=9, job_state=9, pid=-1) + slot(2, 1),
        # Broken headers: each must be refused with a reason.
        "truncated-slots": header(8) + b"".join(slots[:2]),
        "truncated-header": header(1)[:600],
        "bad-magic": header(1, magic=b"CORRALSX") + slot(2, 1),
        "bad-version": header(1, version=2) + slot(2, 1),
        "bad-header-size": header(1, header_size=512) + slot(2, 1),
        "bad-slot-size": header(1, slot_size=128) + slot(2, 1),
        "huge-slot-count": header(0xFFFFFFFF) + slot(2, 1),
        "max-slot-count": header(65537) + slot(2, 1),
        "tiny": b"CORRALSB",
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name + ".scoreboard"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
