"""Token providers against the simulator's IMS look-alike over real sockets (and a few
httpx.MockTransport cases for answers the simulator never gives)."""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from lsproxy.config import Credentials, OAuthSettings
from lsproxy.secret import Secret
from lsproxy.simulator import SimSettings, SimStream, Simulator
from lsproxy.upstream.credentials import (
    CredentialsError,
    OAuthTokenProvider,
    StaticTokenProvider,
    TokenRequestError,
    make_provider,
)
from lsproxy.upstream.token_policy import RefreshSchedule

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "Sup3r-S3cret-Value-xyz"
SCOPES = ("openid", "AdobeID", "read_organizations")
PATH = "/api/1/stream/s1"


async def start_sim(nursery: trio.Nursery, **kw: Any) -> tuple[Simulator, str]:
    base: dict[str, Any] = {
        "streams": (SimStream("s1", rate=1),),
        "linger": 0.0,
        "oauth_client_id": CLIENT_ID,
        "oauth_client_secret": CLIENT_SECRET,
    }
    sim = Simulator(SimSettings(**{**base, **kw}))
    host, port = await nursery.start(sim.serve)
    return sim, f"http://{host}:{port}"


def oauth_creds(
    base: str,
    *,
    secret: str | None = CLIENT_SECRET,
    secret_file: str | None = None,
    api_key: str | None = None,
    token_url: str | None = None,
) -> Credentials:
    return Credentials(
        name="adobe",
        kind="oauth",
        token=None,
        token_file=None,
        api_key=Secret(api_key) if api_key else None,
        oauth=OAuthSettings(
            client_id=CLIENT_ID,
            client_secret=Secret(secret) if secret is not None else None,
            client_secret_file=secret_file,
            scopes=SCOPES,
            token_url=token_url or f"{base}/ims/token/v3",
        ),
        source="oauth client test",
    )


def static_creds(*, token: str | None = None, token_file: str | None = None) -> Credentials:
    return Credentials(
        name="adobe",
        kind="static",
        token=Secret(token) if token is not None else None,
        token_file=token_file,
        api_key=None,
        oauth=None,
        source="test",
    )


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


def ims(sim: Simulator) -> dict[str, Any]:
    return sim.stats()["ims"]


async def stream_status(base: str, token: Secret, api_key: Secret | None) -> int:
    headers = {"Authorization": f"Bearer {token.reveal()}", "Accept-Encoding": "gzip"}
    if api_key is not None:
        headers["x-api-key"] = api_key.reveal()
    async with (
        httpx.AsyncClient(timeout=5) as client,
        client.stream("GET", base + PATH, headers=headers) as r,
    ):
        return r.status_code


def assert_safe(text: str, *secrets: str) -> None:
    for s in (CLIENT_SECRET, *secrets):
        assert s not in text, f"secret leaked into: {text[:300]!r}"


def assert_safe_exception(exc: BaseException, *secrets: str) -> None:
    assert exc.__cause__ is None and exc.__context__ is None
    rendered = "".join(traceback.format_exception(exc))
    assert_safe(str(exc) + repr(exc) + rendered, *secrets)


# --------------------------------------------------------------------------- #
# OAuth against the simulator
# --------------------------------------------------------------------------- #


async def test_fetch_cache_and_use(nursery, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sim, base = await start_sim(nursery)
    provider = make_provider(oauth_creds(base))
    assert isinstance(provider, OAuthTokenProvider)
    assert provider.api_key == Secret(CLIENT_ID)  # x-api-key defaults to the client id
    assert provider.status()["state"] == "none"
    token = await provider.get()
    assert isinstance(token, Secret) and token.reveal().startswith("sim-")
    assert await stream_status(base, token, provider.api_key) == 200
    assert await provider.get() is token
    assert ims(sim)["requests"] == 1
    status = provider.status()
    assert status["kind"] == "oauth" and status["state"] == "valid"
    assert status["refreshes"] == 1 and status["failures"] == 0 and status["last_error"] is None
    assert 86_390 < status["expires_in"] <= 86_400  # type: ignore[operator]
    assert status["scopes"] == list(SCOPES)
    assert status["token_url"] == f"{base}/ims/token/v3"
    dumped = json.dumps(status)
    assert_safe(dumped, token.reveal())
    assert_safe(caplog.text, token.reveal())
    assert "new access token" in caplog.text


async def test_explicit_api_key_is_kept(nursery) -> None:
    _, base = await start_sim(nursery)
    provider = make_provider(oauth_creds(base, api_key="other-key"))
    assert provider.api_key == Secret("other-key")


async def test_concurrent_gets_share_one_fetch(nursery) -> None:
    sim, base = await start_sim(nursery)
    provider = make_provider(oauth_creds(base))
    got: list[Secret] = []

    async def one() -> None:
        got.append(await provider.get())

    async with trio.open_nursery() as inner:
        for _ in range(20):
            inner.start_soon(one)
    assert len(got) == 20 and len(set(got)) == 1
    assert ims(sim)["requests"] == 1


async def test_run_refreshes_ahead_of_expiry_in_real_time(nursery) -> None:
    """ttl 2 s: fetches at about 0, 1.6 and 3.2 s; every token get() hands out is valid."""
    sim, base = await start_sim(nursery, token_ttl=2.0)
    provider = make_provider(oauth_creds(base))
    nursery.start_soon(provider.run)
    t0 = trio.current_time()
    seen: list[str] = []
    while trio.current_time() - t0 < 3.5:
        token = await provider.get()
        assert sim.token_state(token.reveal()) == "valid"
        if not seen or seen[-1] != token.reveal():
            seen.append(token.reveal())
        await trio.sleep(0.02)
    assert len(seen) == 3, seen
    stats = ims(sim)
    assert stats["requests"] == stats["issued"] == 3
    assert provider.status()["refreshes"] == 3


async def test_failed_refresh_keeps_the_token_and_backs_off(nursery, mock_clock, caplog) -> None:
    """Default schedule, 1 h tokens, on a MockClock that runs at real speed and jumps."""
    caplog.set_level(logging.INFO, logger="lsproxy.credentials")
    mock_clock.rate = 1.0
    sim, base = await start_sim(nursery, token_ttl=3600.0, batch_interval=60.0)
    provider = make_provider(oauth_creds(base))
    nursery.start_soon(provider.run)
    await wait_for(lambda: provider.status()["refreshes"] == 1)
    first = await provider.get()
    sim.fail_ims(3)

    async def settle(requests: int) -> None:
        await wait_for(lambda: ims(sim)["requests"] == requests)
        await trio.sleep(0.05)
        assert ims(sim)["requests"] == requests

    mock_clock.jump(2880.0)  # 80 % of the lifetime: the refresh is due
    await settle(2)
    status = provider.status()
    assert status["failures"] == 1 and status["refreshes"] == 1
    assert "HTTP 500 server_error" in str(status["last_error"])
    assert await provider.get() is first  # still valid: no fetch, no error
    assert ims(sim)["requests"] == 2
    # Back-off: 1 s, then 2 s, then 4 s after each failure.
    for wait, requests in ((1.0, 3), (2.0, 4), (4.0, 5)):
        mock_clock.jump(wait - 0.3)
        await trio.sleep(0.1)
        assert ims(sim)["requests"] == requests - 1
        mock_clock.jump(0.3)
        await settle(requests)
    status = provider.status()
    assert status["failures"] == 3 and status["refreshes"] == 2
    assert status["consecutive_failures"] == 0 and status["last_error"] is None
    second = await provider.get()
    assert second != first
    assert sim.token_state(second.reveal()) == "valid"
    assert sim.token_state(first.reveal()) == "valid"  # the old one was never dropped early
    assert "keeping the current token" in caplog.text
    assert_safe(caplog.text, first.reveal(), second.reveal())


async def test_401_invalidate_fetches_a_new_token_at_most_once_a_second(nursery) -> None:
    sim, base = await start_sim(nursery)
    provider = make_provider(oauth_creds(base))
    nursery.start_soon(provider.run)
    first = await provider.get()
    t_first = trio.current_time()
    sim.revoke_tokens()  # the upstream now refuses it
    assert await stream_status(base, first, provider.api_key) == 401
    provider.invalidate(first)
    second = await provider.get()
    assert trio.current_time() - t_first >= 0.99  # the 1 s floor
    assert second != first
    assert await stream_status(base, second, provider.api_key) == 200
    assert provider.status()["invalidations"] == 1
    # A late 401 for the replaced token changes nothing.
    provider.invalidate(first)
    assert await provider.get() is second
    assert provider.status()["invalidations"] == 1
    # A storm of 401s (without saying which token) for 2.5 s: at most one fetch a second.
    before = ims(sim)["requests"]
    t0 = trio.current_time()
    while trio.current_time() - t0 < 2.5:
        provider.invalidate()
        await provider.get()
        await trio.sleep(0.01)
    assert 2 <= ims(sim)["requests"] - before <= 3
    assert sim.stats()["auth_failures"] == {"invalid_token": 1}


async def test_client_secret_file_is_read_at_fetch_time(nursery, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sim, base = await start_sim(nursery)
    secret_file = tmp_path / "client_secret"
    secret_file.write_text("the-old-secret\n")
    provider = make_provider(oauth_creds(base, secret=None, secret_file=str(secret_file)))
    with pytest.raises(TokenRequestError) as info:
        await provider.get()
    assert info.value.status == 401 and info.value.error == "invalid_client"
    assert "HTTP 401 invalid_client: invalid client_secret parameter" in str(info.value)
    assert_safe_exception(info.value, "the-old-secret")
    secret_file.write_text(f"  {CLIENT_SECRET}\n")  # rotated, with stray whitespace
    token = await provider.get()
    assert await stream_status(base, token, provider.api_key) == 200
    assert ims(sim)["requests"] == 2
    assert_safe(caplog.text, "the-old-secret", token.reveal())

    for content, needle in (("", "is empty"), (None, "No such file")):
        provider = make_provider(oauth_creds(base, secret=None, secret_file=str(secret_file)))
        if content is None:
            secret_file.unlink()
        else:
            secret_file.write_text(content)
        with pytest.raises(CredentialsError) as err:
            await provider.get()
        assert str(secret_file) in str(err.value) and needle in str(err.value)
        assert_safe_exception(err.value)


async def test_queued_callers_share_a_failed_fetch(nursery) -> None:
    sim, base = await start_sim(nursery)
    provider = make_provider(oauth_creds(base, secret="wrong-secret"))
    errors: list[str] = []

    async def one() -> None:
        try:
            await provider.get()
        except TokenRequestError as exc:
            assert exc.status == 401 and exc.error == "invalid_client"
            errors.append(str(exc))
            assert_safe_exception(exc, "wrong-secret")

    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(one)
    assert len(errors) == 5 and len(set(errors)) == 1
    assert ims(sim)["requests"] == 1
    assert provider.status()["failures"] == 1


async def test_network_error_is_named_by_type_only(nursery, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    provider = make_provider(oauth_creds("", token_url=f"http://127.0.0.1:{port}/ims/token/v3?x=1"))
    with pytest.raises(CredentialsError) as info:
        await provider.get()
    text = str(info.value)
    assert f"token request to http://127.0.0.1:{port}/ims/token/v3 failed: network error (" in text
    assert "ConnectError" in text and "x=1" not in text
    assert_safe_exception(info.value)
    status = provider.status()
    assert status["state"] == "none" and status["failures"] == 1
    assert "network error" in str(status["last_error"])
    assert_safe(json.dumps(status) + caplog.text)


# --------------------------------------------------------------------------- #
# OAuth against httpx.MockTransport (answers the simulator never gives)
# --------------------------------------------------------------------------- #


Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def mock_provider(handler: Handler) -> OAuthTokenProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), trust_env=False)
    provider = make_provider(oauth_creds("http://ims.test"), http=client)
    assert isinstance(provider, OAuthTokenProvider)
    return provider


def answer(status: int, body: object = None, *, raw: bytes | None = None) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        if raw is not None:
            return httpx.Response(status, content=raw)
        return httpx.Response(status, json=body)

    return handler


async def test_request_is_the_client_credentials_form() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "tok", "expires_in": 100})

    await mock_provider(handler).get()
    (request,) = seen
    assert request.method == "POST" and str(request.url) == "http://ims.test/ims/token/v3"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": "openid,AdobeID,read_organizations",
    }


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [(3600, 3600.0), ("3600", 3600.0), (" 59.5 ", 59.5), (0.5, 0.5), (None, 86400.0)],
)
async def test_expires_in_forms(expires_in: object, expected: float) -> None:
    body: dict[str, object] = {"access_token": "tok", "token_type": "bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    provider = mock_provider(answer(200, body))
    assert (await provider.get()).reveal() == "tok"
    assert provider.schedule.expires_at is not None and provider.schedule.issued_at is not None
    assert provider.schedule.expires_at - provider.schedule.issued_at == pytest.approx(expected)


@pytest.mark.parametrize(
    ("status", "body", "raw", "needle"),
    [
        (200, {"expires_in": 10}, None, "HTTP 200 without an access_token"),
        (200, {"access_token": ""}, None, "HTTP 200 without an access_token"),
        (200, {"access_token": "a b"}, None, "not a valid HTTP header value"),
        (200, {"access_token": "tok", "expires_in": 0}, None, "unusable expires_in"),
        (200, {"access_token": "tok", "expires_in": "soon"}, None, "unusable expires_in"),
        (200, {"access_token": "tok", "expires_in": True}, None, "unusable expires_in"),
        (200, None, b"<html>not json</html>", "HTTP 200 without an access_token"),
        (
            400,
            {"error": "invalid_scope", "error_description": "bad scope for " + CLIENT_SECRET},
            None,
            "refused: HTTP 400 invalid_scope: bad scope for ***",
        ),
        (502, None, b"upstream said " + CLIENT_SECRET.encode(), "HTTP 502 (no IMS error in the response)"),
        (
            401,
            {"error": "invalid_client", "error_description": "x" * 500},
            None,
            "HTTP 401 invalid_client: " + "x" * 197 + "...",
        ),
    ],
)
async def test_bad_answers_give_safe_errors(status, body, raw, needle, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    provider = mock_provider(answer(status, body, raw=raw))
    with pytest.raises(CredentialsError) as info:
        await provider.get()
    assert needle in str(info.value)
    assert str(info.value).startswith("credentials adobe: token request to http://ims.test/ims/token/v3")
    assert_safe_exception(info.value, "a b")
    assert_safe(caplog.text + json.dumps(provider.status()))
    if status != 200:
        assert isinstance(info.value, TokenRequestError) and info.value.status == status


async def test_ims_errors_mask_the_current_token_and_a_file_secret_however_short(
    autojump_clock, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client_secret"
    secret_file.write_text("Qf5s\n")
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(200, json={"access_token": "tk9", "expires_in": 100})
        description = "token tk9 (issued to Qf5s) was revoked; see /tk9?c=Qf5s"
        return httpx.Response(400, json={"error": "invalid_grant tk9", "error_description": description})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), trust_env=False)
    provider = make_provider(
        oauth_creds("http://ims.test", secret=None, secret_file=str(secret_file)), http=client
    )
    first = await provider.get()
    assert first.reveal() == "tk9"
    provider.invalidate(first)
    with pytest.raises(TokenRequestError) as info:
        await provider.get()
    shown = str(info.value) + json.dumps(provider.status())
    assert "see /***?c=***" in shown
    assert_safe(shown, "tk9", "Qf5s")


async def test_a_huge_token_response_is_neither_read_whole_nor_parsed() -> None:
    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(800):  # 50 MB of JSON-looking bytes
            produced += 1
            yield b'{"access_token":"' + b"t" * 65_536

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    with pytest.raises(CredentialsError, match="body over 64 KiB, not a token response"):
        await mock_provider(handler).get()
    assert produced <= 3


async def test_fetch_timeout(autojump_clock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError

    provider = mock_provider(handler)
    t0 = trio.current_time()
    with pytest.raises(CredentialsError, match=r"failed: timed out after 10 s") as info:
        await provider.get()
    assert trio.current_time() - t0 == pytest.approx(10.0)
    assert_safe_exception(info.value)


async def test_cancelled_fetch_leaves_the_provider_usable(autojump_clock) -> None:
    release = trio.Event()
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
        return httpx.Response(200, json={"access_token": f"tok{calls}", "expires_in": 100})

    provider = mock_provider(handler)
    with trio.move_on_after(1.0):
        await provider.get()
    assert not provider.schedule.in_fetch
    assert (await provider.get()).reveal() == "tok2"
    assert provider.status()["failures"] == 0


async def test_unexpected_exception_is_a_failure_not_a_crash(autojump_clock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"boom {CLIENT_SECRET}")

    provider = mock_provider(handler)
    with pytest.raises(CredentialsError, match=r"internal error \(RuntimeError\)") as info:
        await provider.get()
    assert_safe_exception(info.value)
    # run() survives it and retries with back-off (1, 2, 4 s ...).
    async with trio.open_nursery() as inner:
        inner.start_soon(provider.run)
        await trio.sleep(6.5)
        inner.cancel_scope.cancel()
    assert provider.status()["failures"] == 3  # get() at 0; run() at 1 and 3 (1 + 2); next at 7
    assert provider.schedule.consecutive_failures == provider.status()["failures"]


async def test_small_schedule_can_be_injected(autojump_clock) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"access_token": f"tok{calls}", "expires_in": 10})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    oauth = oauth_creds("http://ims.test").oauth
    assert oauth is not None
    provider = OAuthTokenProvider(
        "adobe",
        "test",
        oauth,
        http=client,
        schedule=RefreshSchedule(min_interval=0.1),
    )
    async with trio.open_nursery() as inner:
        inner.start_soon(provider.run)
        await trio.sleep(25)  # fetches at 0, 8, 16, 24
        inner.cancel_scope.cancel()
    assert calls == 4


# --------------------------------------------------------------------------- #
# Static tokens
# --------------------------------------------------------------------------- #


async def test_static_inline_token(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider(static_creds(token="inline-token"))
    assert isinstance(provider, StaticTokenProvider)
    assert (await provider.get()).reveal() == "inline-token"
    assert provider.api_key is None
    provider.invalidate()
    assert (await provider.get()).reveal() == "inline-token"
    status = provider.status()
    assert status["kind"] == "static" and status["invalidations"] == 1 and status["source"] == "test"
    with trio.move_on_after(0.05) as scope:
        await provider.run()  # sleeps forever
    assert scope.cancelled_caught
    assert_safe(json.dumps(status) + caplog.text, "inline-token")


async def test_static_token_file_rotation(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "token"
    path.write_text("token-one\n")
    provider = make_provider(static_creds(token_file=str(path)))
    assert (await provider.get()).reveal() == "token-one"
    assert (await provider.get()).reveal() == "token-one"
    assert provider.status()["refreshes"] == 1  # unchanged file: not read again
    path.write_text("  token-two  \n")
    assert (await provider.get()).reveal() == "token-two"
    # Same size, same mtime, different inode (rename over it, as secret mounts do).
    st = path.stat()
    other = tmp_path / "token.new"
    other.write_text("  token-six  \n")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    other.replace(path)
    assert (await provider.get()).reveal() == "token-six"
    assert provider.status()["refreshes"] == 3
    # invalidate() forces a re-read even when nothing seems to have changed.
    provider.invalidate()
    await provider.get()
    assert provider.status()["refreshes"] == 4

    for content, needle in (("   \n", "is empty"), ("tok\x01en", "not allowed in an HTTP header")):
        path.write_text(content)
        with pytest.raises(CredentialsError) as info:
            await provider.get()
        assert str(path) in str(info.value) and needle in str(info.value)
        assert_safe_exception(info.value, "tok\x01en")
    path.unlink()
    with pytest.raises(CredentialsError, match="No such file") as info:
        await provider.get()
    assert str(path) in str(info.value)
    assert provider.status()["failures"] == 3
    assert provider.status()["last_error"] is not None
    path.write_text("token-back")
    assert (await provider.get()).reveal() == "token-back"
    assert provider.status()["last_error"] is None
    assert_safe(caplog.text + json.dumps(provider.status()), "token-one", "token-two", "token-back")


def test_make_provider_rejects_bad_credentials() -> None:
    bad_kind = Credentials("x", "jwt", None, None, None, None, "test")
    with pytest.raises(ValueError, match="unknown kind"):
        make_provider(bad_kind)
    with pytest.raises(ValueError, match="without oauth settings"):
        make_provider(Credentials("x", "oauth", None, None, None, None, "test"))
    with pytest.raises(ValueError, match="exactly one"):
        make_provider(Credentials("x", "static", None, None, None, None, "test"))
    with pytest.raises(ValueError, match="client_secret"):
        make_provider(oauth_creds("http://ims.test", secret=None))
