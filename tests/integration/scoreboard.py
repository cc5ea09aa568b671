"""Reads a corral scoreboard file the way docs/PROTOCOL.md lays it out."""
import struct

STATES = {0: "empty", 1: "starting", 2: "idle", 3: "busy", 4: "stopping", 5: "running"}


def read_slots(path):
    with open(path, "rb") as f:
        data = f.read()
    header_size, slot_size, count = struct.unpack_from("=III", data, 12)  # either layout
    slots = []
    for i in range(count):
        off = header_size + slot_size * i
        state, pid, gen, lock = struct.unpack_from("=IiII", data, off)
        requests, since, lock_since = struct.unpack_from("=QQQ", data, off + 16)
        slot = {"slot": i, "state": STATES.get(state, state), "pid": pid, "generation": gen,
                "lock": lock, "requests": requests}
        if slot_size >= 256:  # the grown layout: the worker's refusals at 64
            slot["refused"], = struct.unpack_from("=Q", data, off + 64)
        slots.append(slot)
    return slots
