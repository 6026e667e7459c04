"""A Live Stream consumer written the way users write them: stdlib http.client + gzip.

Prints each record's hit sequence number (``hitIdLow - 2**60``) on stdout, one
line per record, written unbuffered *after* the record is processed, so a
SIGKILL can only lose records that were never reported as processed. With
``--visitors`` each line is ``<seq>,<visIdHigh>:<visIdLow>`` (a consumer
group worker that keeps per-visitor state). With ``--ready`` it says
``connected`` on stderr once the proxy accepted it (status 200).

A refused connection exits with status 2 after printing the status and body on
stderr (a group's fifth worker gets 409).

usage: py_consumer.py URL [--header NAME:VALUE]... [--visitors] [--ready]
"""

import http.client
import os
import re
import sys
import urllib.parse
import zlib

HIT_ID_LOW = re.compile(rb'"hitIdLow":(\d+)')
VISITOR = re.compile(rb'"visIdHigh":(\d+),"visIdLow":(\d+)')


def main() -> int:
    args = sys.argv[1:]
    url = urllib.parse.urlsplit(args.pop(0))
    headers = {"Accept-Encoding": "gzip"}
    visitors = "--visitors" in args
    for i, arg in enumerate(args):
        if arg == "--header":
            name, _, value = args[i + 1].partition(":")
            headers[name] = value
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("GET", f"{url.path}?{url.query}", headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        print(f"status {response.status} {response.read().decode(errors='replace')}", file=sys.stderr)
        return 2
    if "--ready" in args:
        print("connected", file=sys.stderr, flush=True)
    gz = response.getheader("Content-Encoding") == "gzip"
    inflater = zlib.decompressobj(31)
    tail = b""
    out = sys.stdout.fileno()
    while True:
        data = response.read1(65536)
        if not data:
            return 0
        tail += inflater.decompress(data) if gz else data
        *records, tail = tail.split(b"\r\n")
        lines = []
        for record in records:
            m = HIT_ID_LOW.search(record)
            if m is None:
                continue
            line = str(int(m.group(1)) - 2**60).encode()
            if visitors:
                v = VISITOR.search(record)
                line += b"," + (v.group(1) + b":" + v.group(2) if v else b"-")
            lines.append(line)
        if lines:
            os.write(out, b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    sys.exit(main())
