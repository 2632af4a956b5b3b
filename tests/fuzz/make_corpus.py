#!/usr/bin/env python3
"""make_corpus.py: writes the seed corpora of the fuzz targets.

tests/fuzz/corpus/server/ holds byte streams for fuzz_server (each frame a
4-byte big-endian length, then an Envelope), tests/fuzz/corpus/wire/ single
Envelopes for fuzz_wire. The frames are encoded here by hand, from
docs/protocol.md and proto/aa.proto, independently of the library.
Run from anywhere: python3 tests/fuzz/make_corpus.py
"""
import os
import struct


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def key(field, wtype):
    return varint(field << 3 | wtype)


def uint(field, v):
    return key(field, 0) + varint(v)


def blob(field, b):
    if isinstance(b, str):
        b = b.encode()
    return key(field, 2) + varint(len(b)) + b


def fixed64(field, v):
    return key(field, 1) + struct.pack("<Q", v)


def envelope(kind, body):
    return blob(kind, body)


START, COMPLETE, CANCEL, PROGRESS, HEARTBEAT, HELLO, GOODBYE = range(1, 8)


def hello():
    return envelope(HELLO, uint(1, 1) + uint(2, 1) + uint(3, 65536) +
                    uint(5, 1000) + fixed64(6, 0x1122334455667788))


def start(op, method, payload=b"", deadline=0, types=0):
    body = uint(1, op) + blob(2, method)
    if payload:
        body += blob(3, payload)
    if deadline:
        body += uint(4, deadline)
    if types:
        body += uint(5, types)
    return envelope(START, body)


def cancel(op, t=1):
    return envelope(CANCEL, uint(1, op) + uint(2, t))


def frame(env):
    return struct.pack(">I", len(env)) + env


def stream(*envs):
    return b"".join(frame(e) for e in envs)


SERVER = {
    "hello": stream(hello()),
    "echo": stream(hello(), start(1, "echo", b"hi")),
    "echo_many": stream(hello(), *[start(i, "echo", b"x" * i)
                                   for i in range(1, 6)]),
    "hold_cancel": stream(hello(), start(1, "hold", types=7), cancel(1)),
    "cancel_types": stream(hello(), start(1, "hold", types=2),
                           cancel(1, 2), cancel(1, 4)),
    "deadline_fail": stream(hello(), start(1, "hold", deadline=1),
                            start(2, "fail")),
    "duplicate_unknown": stream(hello(), start(7, "echo"), start(7, "echo"),
                                start(8, "nope"), cancel(99)),
    "over_pending": stream(hello(), *[start(i, "hold")
                                      for i in range(1, 11)]),
    "heartbeat_goodbye": stream(hello(), envelope(HEARTBEAT, uint(1, 5)),
                                envelope(GOODBYE, uint(1, 7) +
                                         blob(2, "bye"))),
    "no_hello": stream(start(1, "echo")),
    "progress_from_client": stream(hello(),
                                   envelope(PROGRESS, uint(1, 1))),
    "complete_from_client": stream(hello(),
                                   envelope(COMPLETE, uint(1, 1) +
                                            uint(2, 1))),
    "huge_header": stream(hello()) + b"\xff\xff\xff\xff",
    "partial": stream(hello(), start(1, "echo"))[:-3],
}

WIRE = {
    "hello": hello(),
    "start": start(1, "echo", b"payload", 100, 7),
    "cancel": cancel(3, 4),
    "complete": envelope(COMPLETE, uint(1, 2) + uint(2, 3) + uint(4, 22) +
                         blob(5, "failed")),
    "progress": envelope(PROGRESS, uint(1, 2) + blob(2, "50%")),
    "server_hello": envelope(HELLO, uint(1, 1) + uint(2, 2) +
                             uint(3, 65536) + uint(4, 16) + uint(8, 9) +
                             blob(7, blob(1, "echo") + uint(2, 7)) +
                             blob(7, blob(1, "hold"))),
    "goodbye": envelope(GOODBYE, uint(1, 11) + blob(2, "server closed")),
}


def write(dirname, seeds):
    top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus",
                       dirname)
    os.makedirs(top, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(top, name), "wb") as f:
            f.write(data)


write("server", SERVER)
write("wire", WIRE)
