"""The status page: static HTML, CSS and JavaScript shipped in the package.

No build step and no CDN: the files under ``static/`` are served as they are
(read once, then kept in memory). The page polls ``/status`` and ``/rates``
(see app.js); everything it shows comes from those two JSON answers.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

#: route name (``routes.ENDPOINTS``) -> (file under static/, content type)
ASSETS = {
    "": ("index.html", b"text/html; charset=utf-8"),
    "static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "static/style.css": ("style.css", b"text/css; charset=utf-8"),
}
#: Everything from this origin, nothing inline or foreign: a page that shows
#: upstream error text must not run it.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
]


@cache
def _read(filename: str) -> bytes:
    return resources.files("lsproxy.serve").joinpath("static", filename).read_bytes()


def asset(name: str) -> tuple[bytes, bytes] | None:
    """(content type, body) of the page asset behind route ``name``; None if it is not one."""
    entry = ASSETS.get(name)
    if entry is None:
        return None
    filename, content_type = entry
    return content_type, _read(filename)
