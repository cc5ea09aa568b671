#!/usr/bin/python3
"""The benchmarks' legacy inetd program in Python, standard library only: its start-up
(the interpreter, json and decimal) is what a legacy program pays before it reads (about
35 ms on a quiet machine here). It reads one request, answers with a small HTTP/1.0
response and exits: one connection, one process."""
import decimal
import json
import os

request = os.read(0, 65536)
body = (json.dumps({"hello": str(decimal.Decimal(len(request)))}) + "\n").encode()
head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
os.write(1, head + body)
