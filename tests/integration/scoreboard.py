"""Reads a corral scoreboard file the way docs/PROTOCOL.md lays it out."""
import struct

HEADER_SIZE = 1024
SLOT_SIZE = 64
STATES = {0: "empty", 1: "starting", 2: "idle", 3: "busy", 4: "stopping", 5: "running"}


def read_slots(path):
    with open(path, "rb") as f:
        data = f.read()
    count = struct.unpack_from("=I", data, 20)[0]
    slots = []
    for i in range(count):
        off = HEADER_SIZE + SLOT_SIZE * i
        state, pid, gen, lock = struct.unpack_from("=IiII", data, off)
        requests, since, lock_since = struct.unpack_from("=QQQ", data, off + 16)
        slots.append({"slot": i, "state": STATES.get(state, state), "pid": pid, "generation": gen,
                      "lock": lock, "requests": requests})
    return slots
