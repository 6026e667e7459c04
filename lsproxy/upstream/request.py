"""The upstream GET: its URL and headers, and the rule for following redirects.

Theory of operation
-------------------
Live Stream may answer a connect with a redirect to another host. HTTP
libraries drop ``Authorization`` on cross-origin redirects, which Live Stream
then answers with 401; so redirects are followed by hand (``httpx`` with
``follow_redirects=False``) and the new request carries the SAME headers,
including ``Authorization``, ``x-api-key`` and ``Accept-Encoding: gzip``.

Limits: at most ``MAX_REDIRECTS`` hops; the Location must be an absolute or
relative http(s) URL; an https -> http downgrade is refused, because it
would send the bearer token in clear text. If the Location has no
``maxConnections``, the original value is carried over: every connection of
a stream must send the same value, and absent means 1 (a silent 409 cause).

Credentials appear only in ``headers``; ``repr()`` masks them and no error
message here includes a header value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from lsproxy import __version__
from lsproxy.errors import RedirectError
from lsproxy.secret import Secret

__all__ = [
    "MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "UpstreamRequest",
    "build_request",
    "follow_redirect",
]

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_CONNECTIONS_PARAM = "maxConnections"
USER_AGENT = f"lsproxy/{__version__}"
_MASKED = frozenset({"authorization", "x-api-key"})
_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True, repr=False)
class UpstreamRequest:
    url: str  # with maxConnections (and other params) merged into the query
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def __repr__(self) -> str:
        shown = tuple((k, "***" if k.lower() in _MASKED else v) for k, v in self.headers)
        return f"UpstreamRequest(url={self.url!r}, headers={shown!r})"

    __str__ = __repr__


def build_request(
    url: str,
    *,
    token: str | Secret,
    api_key: str | Secret | None,
    max_connections: int = 1,
    params: Mapping[str, str] | None = None,
) -> UpstreamRequest:
    """The GET for a stream: ``url``'s own query kept, ``maxConnections`` set, ``params`` added.

    ``params`` override same-named parameters of ``url``; ``maxConnections``
    is set only through ``max_connections``. Raises ``ValueError`` on a bad
    url, a bad ``max_connections`` or a credential unfit for a header.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise ValueError(f"upstream url must be an absolute http(s) URL, got {url!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise ValueError(f"max_connections must be an int, got {max_connections!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    extra = dict(params or {})
    if MAX_CONNECTIONS_PARAM in extra:
        raise ValueError("set maxConnections with max_connections=, not in params")
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k != MAX_CONNECTIONS_PARAM and k not in extra
    ]
    query.append((MAX_CONNECTIONS_PARAM, str(max_connections)))
    query.extend(extra.items())
    full = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    token_value = (token.reveal() if isinstance(token, Secret) else token).strip()
    key_value = (api_key.reveal() if isinstance(api_key, Secret) else api_key or "").strip()
    if not token_value:
        raise ValueError("the access token is empty")
    headers = [
        ("Authorization", f"Bearer {_header_safe(token_value, 'access token')}"),
        ("Accept-Encoding", "gzip"),
    ]
    if key_value:
        headers.append(("x-api-key", _header_safe(key_value, "api key")))
    headers.append(("User-Agent", USER_AGENT))
    return UpstreamRequest(full, tuple(headers))


def follow_redirect(
    request: UpstreamRequest, status: int, location: str | None, hops: int
) -> UpstreamRequest:
    """The request to make instead, after ``status`` with ``Location: location``.

    ``hops`` is the number of redirects already followed. Headers are kept
    unchanged, even cross-origin. Raises ``RedirectError`` if the redirect
    cannot be followed; ``ValueError`` if ``status`` is not a redirect.
    """
    if status not in REDIRECT_STATUSES:
        raise ValueError(f"status {status} is not a redirect")
    if hops >= MAX_REDIRECTS:
        raise RedirectError(f"too many redirects (more than {MAX_REDIRECTS}) from {request.url}")
    location = (location or "").strip()
    if not location:
        raise RedirectError(f"redirect {status} from {request.url} has no Location")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in location):
        raise RedirectError(f"redirect {status} from {request.url}: Location contains whitespace")
    target = urljoin(request.url, location)
    parts = urlsplit(target)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not parts.hostname:
        raise RedirectError(f"redirect {status} from {request.url} to {target!r}: not an http(s) URL")
    if scheme == "http" and urlsplit(request.url).scheme.lower() == "https":
        raise RedirectError(
            f"redirect {status} from {request.url} to {target!r}: refusing https -> http, "
            "it would send the token in clear text"
        )
    query = parts.query
    if not _get_param(query, MAX_CONNECTIONS_PARAM):
        original = _get_param(urlsplit(request.url).query, MAX_CONNECTIONS_PARAM)
        if original:
            carried = urlencode([(MAX_CONNECTIONS_PARAM, original[-1])])
            query = f"{query}&{carried}" if query else carried
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return UpstreamRequest(url, request.headers)


def _get_param(query: str, name: str) -> list[str]:
    return [v for k, v in parse_qsl(query, keep_blank_values=True) if k == name]


def _header_safe(value: str, what: str) -> str:
    """Reject values that would break or inject header lines (without echoing them)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or not value.isascii():
        raise ValueError(f"the {what} contains characters not allowed in an HTTP header")
    return value
