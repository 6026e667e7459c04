"""A Live Stream consumer written the way users write them: stdlib http.client + gzip.

Prints each record's hit sequence number (``hitIdLow - 2**60``) on stdout, one
line per record, written unbuffered *after* the record is processed, so a
SIGKILL can only lose records that were never reported as processed.

usage: py_consumer.py URL
"""

import http.client
import os
import re
import sys
import urllib.parse
import zlib

HIT_ID_LOW = re.compile(rb'"hitIdLow":(\d+)')


def main() -> int:
    url = urllib.parse.urlsplit(sys.argv[1])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("GET", f"{url.path}?{url.query}", headers={"Accept-Encoding": "gzip"})
    response = conn.getresponse()
    if response.status != 200:
        print(f"status {response.status}", file=sys.stderr)
        return 2
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
        lines = [str(int(m.group(1)) - 2**60).encode() for r in records if (m := HIT_ID_LOW.search(r))]
        if lines:
            os.write(out, b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    sys.exit(main())
