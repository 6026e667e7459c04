"""Deterministic, cheap Live Stream hit records.

Theory of operation: a hit is a pure function of ``(seq, epoch)`` for a given
``HitFactory`` (seed, endpoint, report suite, run). ``seq`` is the 0-based global
sequence number of the hit in its stream; ``epoch`` is the Unix second the
simulator "received" it. Because of that, the simulator need not keep record
bytes around: it keeps ``(first seq, count, epoch)`` batches and re-renders
them when an old position is read again, byte for byte identical.

Rendering is a join of pre-rendered fragments: a per-stream head, the hit id,
one of a few thousand visitor fragments (ids, geo, user agent), one of a few
hundred page fragments (page, props, evars), one of a few dozen
events/products fragments and a constant tail. A 64-bit mix of ``seq`` picks
the fragments, so no ``json.dumps`` runs per hit.

Ids exceed 2^53 and are written as exact JSON integers: ``hitIdHigh`` is a
constant per stream and run, ``hitIdLow = 2**60 + seq`` (so ``seq_of`` recovers
the sequence number from the record text). ``run`` identifies one life of the
simulator (random per start unless given): a restarted simulator numbers its
hits from 0 again, and without it would re-emit the ids of its previous life,
which a de-duplicating consumer rightly drops. Live Stream's ids are unique
across everything; the rest of a hit depends on the seed only, so content stays
reproducible across runs. Every ``EMPTY_EVERY``-th hit carries an
extra bare CRLF after its line: the empty record Live Stream sometimes sends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re

SEQ_BASE = 2**60
EMPTY_EVERY = 200
VISITORS = 3000
PAGES = 400
EVENTS = 48
CRLF = b"\r\n"

_M64 = (1 << 64) - 1
_SEQ_RE = re.compile(rb'"hitIdLow":(\d+)')

_COUNTRIES = [
    ("usa", "california", "san francisco", "94105", 807, 37.77, -122.42),
    ("usa", "new york", "new york", "10001", 501, 40.75, -73.99),
    ("fra", "idf", "paris", "75001", 0, 48.86, 2.34),
    ("deu", "be", "berlin", "10115", 0, 52.53, 13.38),
    ("gbr", "eng", "london", "ec1a", 826001, 51.52, -0.10),
    ("ita", "lom", "milano", "20121", 0, 45.47, 9.19),
    ("jpn", "13", "tokyo", "100-0001", 0, 35.68, 139.76),
    ("bra", "sp", "sao paulo", "01000-000", 0, -23.55, -46.63),
    ("ind", "mh", "mumbai", "400001", 0, 19.08, 72.88),
    ("aus", "nsw", "sydney", "2000", 0, -33.87, 151.21),
]
_AGENTS = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        "Google Chrome 124",
        "Windows 10",
        "",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
        "Safari 17.4",
        "macOS 10.15",
        "",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mobile Safari 17.4",
        "iOS 17.4",
        "Apple iPhone",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla Firefox 125",
        "Linux",
        "",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36",
        "Google Chrome 124",
        "Android 14",
        "Google Pixel 8",
    ),
]
_SECTIONS = ["home", "search", "product", "category", "cart", "checkout", "account", "help"]
_CAMPAIGNS = ["", "", "DFA:172612", "em:spring-sale", "sem:brand", "soc:fb-123"]


def seq_of(record: bytes) -> int:
    """The sequence number of a simulator record (``hitIdLow - 2**60``)."""
    m = _SEQ_RE.search(record)
    if m is None:
        raise ValueError("not a simulator record: no hitIdLow")
    return int(m.group(1)) - SEQ_BASE


def hit_id_high(seed: int, endpoint: str, run: int = 0) -> int:
    """The constant ``hitIdHigh`` of a stream in one run: 2^62 <= value < 2^63."""
    return (_digest64(f"{seed}:{endpoint}:{run}:hitIdHigh") & (2**62 - 1)) | 2**62


def _digest64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _frag(obj: dict[str, object]) -> bytes:
    """``{"a":1,"b":2}`` -> ``,"a":1,"b":2`` (a fragment to splice into a record)."""
    return b"," + json.dumps(obj, separators=(",", ":")).encode()[1:-1]


def _visitor(rng: random.Random, i: int) -> tuple[bytes, int]:
    vis_high, vis_low = rng.getrandbits(63) | 2**60, rng.getrandbits(63) | 2**60
    country, region, city, zip_code, dma, lat, lon = rng.choice(_COUNTRIES)
    agent, browser, os_name, device = rng.choice(_AGENTS)
    width, height = rng.choice([(1920, 1080), (1440, 900), (390, 844), (1366, 768)])
    frag = _frag(
        {
            "visIdHigh": vis_high,
            "visIdLow": vis_low,
            "visIdType": 3,
            "mcVisIdHigh": rng.getrandbits(63) | 2**60,
            "mcVisIdLow": rng.getrandbits(63) | 2**60,
            "customVisId": f"cust-{i:05d}" if i % 3 == 0 else "",
            "visitNumber": rng.randint(1, 40),
            "geoCountry": country,
            "geoRegion": region,
            "geoCity": city,
            "geoZip": zip_code,
            "geoDMA": dma,
            "geoLatitude": lat,
            "geoLongitude": lon,
            "userAgent": agent,
            "browser": browser,
            "os": os_name,
            "mobileDevice": device,
            "browserWidth": width,
            "browserHeight": height,
            "resolution": f"{width}x{height}",
            "colorDepth": "24",
            "connectionType": "LAN/Wifi",
            "cookies": "Y",
            "javascriptEnabled": "Y",
            "javascriptVersion": "1.6",
            "language": rng.choice(["en-US", "fr-FR", "de-DE", "it-IT", "ja-JP", "pt-BR"]),
            "ipAddress": f"192.0.2.{rng.randint(1, 254)}",
        }
    )
    return frag, vis_high ^ vis_low


def _page(rng: random.Random, i: int) -> bytes:
    section = _SECTIONS[i % len(_SECTIONS)]
    url = f"https://www.example.com/{section}/page{i}.html"
    evars = {f"eVar{n}": f"{section}-value-{rng.randint(1, 999)}" for n in range(1, 26)}
    evars["campaign"] = rng.choice(_CAMPAIGNS)
    return _frag(
        {
            "pageName": f"{section}: Page #{i}",
            "pageURL": url,
            "pageType": "",
            "channel": section,
            "server": "www.example.com",
            "referrer": rng.choice(["", "https://www.google.com/", url]),
            "searchEngine": "",
            "searchKeywords": "",
            "props": {f"prop{n}": f"{section}-prop-{rng.randint(1, 99)}" for n in range(1, 21)},
            "evars": {"evars": evars},
        }
    )


def _event(rng: random.Random, i: int) -> bytes:
    events: dict[str, object] = {
        f"event{n}": [{"count": 1, "exponent": 0, "unique": ""}] for n in rng.sample(range(1, 100), 1 + i % 4)
    }
    products = [
        {
            "category": rng.choice(_SECTIONS),
            "name": f"SKU-{rng.randint(1000, 9999)}",
            "quantity": 1 + i % 3,
            "revenue": round(rng.uniform(5, 500), 2),
            "events": {},
            "evars": {},
        }
        for _ in range(i % 3)
    ]
    return _frag({"events": events, "products": products})


@functools.cache
def _pools(seed: int) -> tuple[list[bytes], list[int], list[bytes], list[bytes]]:
    """Visitor, visitor-key, page and events fragments; shared by the streams of one seed."""
    rng = random.Random(f"pools:{seed}")
    visitors = [_visitor(rng, i) for i in range(VISITORS)]
    pages = [_page(rng, i) for i in range(PAGES)]
    events = [_event(rng, i) for i in range(EVENTS)]
    return [v[0] for v in visitors], [v[1] for v in visitors], pages, events


class HitFactory:
    """Renders the records of one stream; see the module docstring."""

    def __init__(self, endpoint: str, report_suite: str = "simsuite", seed: int = 1, run: int = 0) -> None:
        self.endpoint = endpoint
        self.report_suite = report_suite
        self.seed = seed
        self.run = run
        self.hit_id_high = hit_id_high(seed, endpoint, run)
        self._key = _mix(_digest64(f"{seed}:{endpoint}:content"))  # not the run's: same content
        self._head = _frag({"reportSuite": report_suite, "hitIdHigh": self.hit_id_high})
        self._head = b"{" + self._head[1:] + b',"hitIdLow":'
        pools = _pools(seed)
        self._visitors, self.visitor_keys, self._pages, self._events = pools
        self._tail = (
            _frag(
                {
                    "hitSource": 1,
                    "isErrorPage": False,
                    "bot": "<Not a bot>",
                    "charSet": "UTF-8",
                    "currency": "EUR",
                    "sdkVersion": "AppMeasurement 2.25.0",
                    "tntAction": "",
                    "mobileAction": "",
                    "privacy": {"optOut": False, "consent": "Y"},
                }
            )
            + b"}"
        )

    def render(self, seq: int, epoch: int) -> tuple[bytes, int]:
        """One record line (CRLF-terminated, plus a bare CRLF every EMPTY_EVERY-th hit)
        and its visitor key (hits with the same key belong to the same visitor)."""
        x = _mix(self._key ^ seq)
        v = x % VISITORS
        line = b"".join(
            (
                self._head,
                b"%d" % (SEQ_BASE + seq),
                b',"timeGMT":%d,"receivedTimeGMT":%d,"visitPageNum":%d'
                % (epoch - ((x >> 48) & 7), epoch, ((x >> 56) & 31) + 1),
                self._visitors[v],
                self._pages[(x >> 20) % PAGES],
                self._events[(x >> 36) % EVENTS],
                self._tail,
                b"\r\n\r\n" if seq % EMPTY_EVERY == EMPTY_EVERY - 1 else CRLF,
            )
        )
        return line, self.visitor_keys[v]

    def render_range(self, first: int, count: int, epoch: int) -> tuple[list[bytes], list[int]]:
        """Records ``first .. first+count-1``, all received at ``epoch``."""
        lines: list[bytes] = []
        keys: list[int] = []
        render = self.render
        for seq in range(first, first + count):
            line, key = render(seq, epoch)
            lines.append(line)
            keys.append(key)
        return lines, keys
