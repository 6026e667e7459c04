"""The admin API's path and method table (serve/admin.py parse_call)."""

from __future__ import annotations

import pytest

from lsproxy.serve.admin import AdminCall, MethodNotAllowed, parse_call
from lsproxy.serve.routes import AdminRequest, ErrorReply, Router


@pytest.mark.parametrize(
    ("method", "path", "call"),
    [
        ("GET", "/admin/streams", AdminCall("streams")),
        ("GET", "/admin/consumers/", AdminCall("consumers")),
        ("HEAD", "/admin/consumers", AdminCall("consumers")),
        ("POST", "/admin/streams/s1/reconnect", AdminCall("reconnect", "s1")),
        ("POST", "/admin/streams/s1/consumers/x/cursor", AdminCall("move", "s1", "x")),
        ("POST", "/admin/streams/s1/consumers/team/x/cursor", AdminCall("move", "s1", "team/x")),
        ("POST", "/admin/streams/s1/consumers/team%2Fx/cursor", AdminCall("move", "s1", "team/x")),
        ("POST", "/admin/streams/s1/consumers/team/cursor/cursor", AdminCall("move", "s1", "team/cursor")),
        ("DELETE", "/admin/streams/s1/consumers/team/cursor", AdminCall("delete", "s1", "team/cursor")),
        ("DELETE", "/admin/streams/a%20b/consumers/x", AdminCall("delete", "a b", "x")),
    ],
)
def test_calls(method: str, path: str, call: AdminCall) -> None:
    assert parse_call(method, path) == call


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/admin/consumers", b"GET, HEAD"),
        ("GET", "/admin/streams/s1/reconnect", b"POST"),
        ("GET", "/admin/streams/s1/consumers/x/cursor", b"POST, DELETE"),
        ("POST", "/admin/streams/s1/consumers/x", b"DELETE"),
        ("GET", "/admin/streams/s1/consumers/x", b"DELETE"),
    ],
)
def test_wrong_methods_are_405_with_allow(method: str, path: str, allow: bytes) -> None:
    reply = parse_call(method, path)
    assert isinstance(reply, MethodNotAllowed) and reply.status == 405 and reply.allow == allow


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/nope", "/admin/streams//reconnect", "/admin/streams/s1"])
def test_unknown_admin_paths_are_404(path: str) -> None:
    reply = parse_call("GET", path)
    assert isinstance(reply, ErrorReply) and reply.status == 404


def test_the_router_hands_everything_under_admin_to_the_admin_api() -> None:
    router = Router({"s1": "s1"})
    assert router.route(b"DELETE", b"/admin/streams/s1/consumers/x?y=1", b"1.1", []) == AdminRequest(
        "DELETE", "/admin/streams/s1/consumers/x"
    )
    assert isinstance(router.route(b"GET", b"/administrator", b"1.1", []), ErrorReply)
    assert router.resolve("s1") == "s1" and router.resolve("s2") is None
