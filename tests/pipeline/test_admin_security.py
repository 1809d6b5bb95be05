"""The admin API is secure by default (runtime/admin_guard.py): tokens on everything but health
and metrics, registration tokens scoped to their Service, no cross-origin or DNS-rebinding
requests, JSON-only writes; --insecure-admin drops only the token and says so. In process, on
free loopback ports."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from samples import DISCOVERY_POLICY

from meshpilot.base.netutil import split_authority
from meshpilot.ca.tokens import TokenAuthority
from meshpilot.runtime.admin import ACCESS
from meshpilot.runtime.admin_guard import Access, HostRules
from meshpilot.runtime.app import Meshpilot, Settings

OPEN = {"/healthz", "/readyz", "/metrics"}
# The dashboard's static page and assets: no token, no data (tests/pipeline/test_dashboard_api.py).
PAGE = {"/", "/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"}
STREAMS = {"/debug/dashboard/events"}  # an endless response: its status only


def make(tmp_path: Path, **overrides: Any) -> Meshpilot:
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "shop.yaml").write_text(DISCOVERY_POLICY)
    return Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                              admin_address="127.0.0.1:0", watch=False,
                              state_dir=tmp_path / "state", **overrides))


def run(mp: Meshpilot, scenario: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(session)
        finally:
            await mp.stop()

    asyncio.run(main())


async def send(session: aiohttp.ClientSession, mp: Meshpilot, method: str, path: str, *,
               token: str | None = None, headers: dict[str, str] | None = None,
               body: Any = None, data: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or text) of one request to the admin API."""
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent.update(headers or {})
    kwargs: dict[str, Any] = {"json": body} if body is not None else {"data": data}
    async with session.request(method, f"http://{mp.admin_address}{path}", headers=sent,
                               **kwargs) as r:
        text = await r.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return r.status, dict(r.headers), parsed


def concrete(path: str) -> str:
    return path.replace("{id}", "some-id")


def test_every_route_but_health_and_metrics_refuses_an_anonymous_request(tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        assert mp._admin is not None
        routes = {(route.method, route.resource.canonical)
                  for route in mp._admin.app.router.routes() if route.resource is not None}
        assert len(routes) > 8 and {p for _, p in routes} >= OPEN | {"/debug/config_dump"}
        # What does not need an operator token is exactly this; everything else does.
        assert {p for p, a in ACCESS.items() if a is Access.OPEN} == OPEN
        assert {p for p, a in ACCESS.items() if a is Access.PAGE} == PAGE
        registration = mp.tokens.issue("registration", "ratings")
        node = mp.tokens.issue("node", "edge")
        for method, path in sorted(routes):
            status, headers, body = await send(session, mp, method, concrete(path),
                                               headers={"Content-Type": "application/json"})
            if path in OPEN or path in PAGE:
                assert status in (200, 503), (method, path, status)
                continue
            assert status == 401, (method, path, status, body)
            assert headers["WWW-Authenticate"].startswith("Bearer")
            # A token of another kind is known but not allowed: 403 (registration routes take
            # registration tokens; the route then checks the Service).
            for token in (node,) if path.startswith("/v1/") else (node, registration):
                status, _, body = await send(session, mp, method, concrete(path), token=token,
                                             headers={"Content-Type": "application/json"})
                assert status == 403, (method, path, status, body)
        # Paths that do not exist need a token too: an anonymous caller cannot map the API.
        for path in ("/nope", "/debug/", "/v1/registrations/a/b", "/healthz/"):
            assert (await send(session, mp, "GET", path))[0] == 401, path
        # An operator reads every GET route.
        operator = mp.tokens.issue("operator")
        for method, path in sorted(routes):
            if method == "GET" and path in STREAMS:
                async with session.get(f"http://{mp.admin_address}{path}", headers={
                        "Authorization": f"Bearer {operator}"}) as r:
                    assert r.status == 200 and r.content_type == "text/event-stream"
            elif method == "GET":
                status, _, body = await send(session, mp, "GET", concrete(path) + "?view=edge",
                                             token=operator)
                assert status == 200, (path, status, body)

    run(mp, scenario)


def test_cross_origin_wrong_host_and_non_json_writes_are_refused(tmp_path: Path) -> None:
    mp = make(tmp_path, admin_hosts=("meshpilot.internal", "admin.example:8443"))
    registration = {"service": "ratings", "address": "10.0.0.5:8080"}

    async def scenario(session: aiohttp.ClientSession) -> None:
        operator = mp.tokens.issue("operator")
        port = mp.admin_address.rsplit(":", 1)[1]

        async def post(headers: dict[str, str], **kwargs: Any) -> int:
            kwargs.setdefault("body", registration)
            return (await send(session, mp, "POST", "/v1/registrations", token=operator,
                               headers=headers, **kwargs))[0]

        # The text/plain POST any web page may send without asking first: refused, even with
        # a valid token, and so is a POST with no body (also "simple" for a browser).
        raw = json.dumps(registration).encode()
        assert await post({"Content-Type": "text/plain"}, data=raw, body=None) == 415
        assert await post({"Content-Type": "application/x-www-form-urlencoded"}, data=raw,
                          body=None) == 415
        assert await post({}, data=None, body=None) == 415
        # Another page's origin, even with a token: 403; the admin's own origins: fine.
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}",
                       f"http://127.0.0.1.evil.example:{port}", "file://"):
            assert await post({"Origin": origin}) == 403, origin
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}",
                       "http://meshpilot.internal", "https://admin.example:8443"):
            assert await post({"Origin": origin}) in (200, 201), origin
        # DNS rebinding: the page's own name in Host. 421, whatever the token.
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{int(port) + 1}",
                     "admin.example:9999", "127.0.0.1", "", "a b"):
            status, _, _ = await send(session, mp, "GET", "/debug/status", token=operator,
                                      headers={"Host": host})
            assert status == 421, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                     f"LOCALHOST.:{port}", "meshpilot.internal", "meshpilot.internal:1",
                     "admin.example:8443"):
            status, _, _ = await send(session, mp, "GET", "/debug/status", token=operator,
                                      headers={"Host": host})
            assert status == 200, host
        # Health and metrics answer any Host (probes and scrapers use the pod's IP), but not
        # another page's Origin.
        for path in OPEN:
            assert (await send(session, mp, "GET", path, headers={"Host": "10.1.2.3:80"}))[0] \
                == 200
            assert (await send(session, mp, "GET", path,
                               headers={"Origin": "http://evil.example"}))[0] == 403
        # DELETE and PUT need no body (a browser asks before sending either cross-origin).
        assert (await send(session, mp, "DELETE", "/v1/registrations/unknown",
                           token=operator))[0] == 404

    run(mp, scenario)


def test_a_registration_token_acts_for_its_own_service_only(tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        operator = mp.tokens.issue("operator")
        ratings = mp.tokens.issue("registration", "ratings")
        status, _, other = await send(session, mp, "POST", "/v1/registrations", token=operator,
                                      body={"service": "reviews", "address": "10.0.0.9:80",
                                            "ttl": "1h"})
        assert status == 201
        before = mp.endpoints.instances(service="reviews")
        # Register, renew, delete, list another Service: 403 or 404 (an id of another Service
        # looks like no id at all), and nothing changes.
        status, _, _ = await send(session, mp, "POST", "/v1/registrations", token=ratings,
                                  body={"service": "reviews", "address": "10.6.6.6:80"})
        assert status == 403
        for method in ("PUT", "DELETE"):
            status, _, _ = await send(session, mp, method, f"/v1/registrations/{other['id']}",
                                      token=ratings)
            assert status == 404, method
        status, _, _ = await send(session, mp, "GET", "/v1/registrations?service=reviews",
                                  token=ratings)
        assert status == 403
        assert mp.endpoints.instances(service="reviews") == before
        # Nothing of /debug/*.
        for path in ("/debug/discovery", "/debug/status", "/debug/proxies",
                     "/debug/config_dump?view=edge"):
            assert (await send(session, mp, "GET", path, token=ratings))[0] == 403, path
        # Its own Service: all of it; and it lists only its own.
        status, _, mine = await send(session, mp, "POST", "/v1/registrations", token=ratings,
                                     body={"service": "ratings", "address": "10.0.0.5:80"})
        assert status == 201
        status, _, listed = await send(session, mp, "GET", "/v1/registrations", token=ratings)
        assert [r["id"] for r in listed["registrations"]] == [mine["id"]]
        assert (await send(session, mp, "PUT", f"/v1/registrations/{mine['id']}",
                           token=ratings))[0] == 200
        assert (await send(session, mp, "DELETE", f"/v1/registrations/{mine['id']}",
                           token=ratings))[0] == 204

    run(mp, scenario)


def test_expired_foreign_and_malformed_tokens_get_401(tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        past = TokenAuthority.load(tmp_path / "state")
        past.clock = lambda: time.time() - 7200
        expired = past.issue("operator", ttl=60)
        foreign = TokenAuthority(b"f" * 32).issue("operator")
        for token in (expired, foreign, "not-a-token", expired + "x"):
            for path in ("/debug/status", "/v1/registrations"):
                status, headers, body = await send(session, mp, "GET", path, token=token)
                assert status == 401, (path, body)
                assert headers["WWW-Authenticate"] == 'Bearer realm="meshpilot"'
                assert token not in json.dumps(body)
        status, _, body = await send(session, mp, "GET", "/debug/status",
                                     headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert status == 401 and "a token is required" in body["error"]

    run(mp, scenario)


def test_a_rotated_key_is_used_by_the_running_server(tmp_path: Path) -> None:
    from meshpilot.ca.tokens import rotate_key

    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        old = mp.tokens.issue("operator")
        assert (await send(session, mp, "GET", "/debug/status", token=old))[0] == 200
        rotate_key(tmp_path / "state")
        assert (await send(session, mp, "GET", "/debug/status", token=old))[0] == 401
        new = TokenAuthority.load(tmp_path / "state").issue("operator")
        assert (await send(session, mp, "GET", "/debug/status", token=new))[0] == 200

    run(mp, scenario)


def test_insecure_admin_opens_the_api_and_says_so(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    mp = make(tmp_path, insecure_admin=True)

    async def scenario(session: aiohttp.ClientSession) -> None:
        status, _, body = await send(session, mp, "GET", "/readyz")
        assert status == 200 and "admin API is open" in body and "--insecure-admin" in body
        assert (await send(session, mp, "GET", "/debug/status"))[0] == 200
        status, _, _ = await send(session, mp, "POST", "/v1/registrations",
                                  body={"service": "ratings", "address": "10.0.0.5:8080"})
        assert status == 201
        # Only the token goes: rebinding, cross-origin and text/plain writes are still refused.
        assert (await send(session, mp, "GET", "/debug/status",
                           headers={"Host": "evil.example"}))[0] == 421
        assert (await send(session, mp, "POST", "/v1/registrations", data=b"{}",
                           headers={"Content-Type": "text/plain"}))[0] == 415
        assert (await send(session, mp, "GET", "/debug/status",
                           headers={"Origin": "http://evil.example"}))[0] == 403

    with caplog.at_level(logging.WARNING):
        run(mp, scenario)
    assert any("admin API is open" in r.getMessage() for r in caplog.records)


def test_secure_readyz_has_no_warning(tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        assert (await send(session, mp, "GET", "/readyz"))[2] == "ready\n"

    run(mp, scenario)


def test_a_malformed_admin_host_refuses_to_start(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from meshpilot.cli import main

    with pytest.raises(ValueError):
        make(tmp_path, admin_hosts=("[nope",))
    with pytest.raises(SystemExit):
        main(["serve", "--policy", str(tmp_path), "--admin-host", "a:b"])
    assert "expected NAME or NAME:PORT" in capsys.readouterr().err


def test_host_rules() -> None:
    assert split_authority("[::1]:80") == ("::1", 80)
    assert split_authority("Example.COM.") == ("example.com", None)
    assert split_authority("::1") == ("::1", None)
    for bad in ("[::1", "a:b", "a:99999", ":80", "a b:1", "[::1]x", "a:80:"):
        with pytest.raises(ValueError):
            split_authority(bad)
    loopback = HostRules("127.0.0.1:18001")
    assert loopback.allows_host_header("localhost:18001")
    assert not loopback.allows_host_header("localhost")  # port 80
    anywhere = HostRules("0.0.0.0:18001", ("10.0.0.7:18001",))
    assert anywhere.allows_host_header("127.0.0.1:18001")
    assert anywhere.allows_host_header("10.0.0.7:18001")
    assert not anywhere.allows_host_header("0.0.0.0:18002")
    for v6 in ("::1:18001", "[::1]:18001"):  # as app.py and as a user write it
        assert HostRules(v6).allows_host_header("[::1]:18001")
        assert HostRules(v6).allows_host_header("localhost:18001")
    public = HostRules("10.0.0.7:18001")
    assert not public.allows_host_header("127.0.0.1:18001")
    assert public.allows_origin("http://10.0.0.7:18001")
    assert not public.allows_origin("http://10.0.0.7:18001/path")


# ---- fuzzing the registration API ------------------------------------------------------------

SERVICES = st.sampled_from(["ratings", "reviews", "Reviews", "reviews ", "", "ratings/x"])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=10), children, max_size=4),
                    max_leaves=12)
REGISTRATION = st.fixed_dictionaries(
    {"service": SERVICES},
    optional={"address": st.sampled_from(["10.0.0.1:80", "10.0.0.9:80", "[::1]:1", "x:1",
                                          "10.0.0.1:0", "10.0.0.1"]) | st.text(max_size=12),
              "ttl": st.sampled_from(["1s", "1h", 0, -1, 1e308, "forever", True, None]),
              "labels": st.dictionaries(st.text(max_size=8), JSON, max_size=3),
              "extra": JSON})
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30)


@st.composite
def requests(draw: st.DrawFn, port: str, reviews_id: str) -> dict[str, Any]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    path = draw(st.sampled_from([
        "/v1/registrations", f"/v1/registrations/{reviews_id}", "/v1/registrations?service=reviews",
        "/v1/registrations?service=ratings", f"/v1/registrations/{reviews_id}/",
        f"//v1/registrations/{reviews_id}", "/v1/registrations/%2e%2e", "/debug/discovery",
        "/v1/registrations?service=", "/v1/registrations/" + "x" * 300])
        | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20).map(
            lambda tail: "/v1/registrations/" + tail.replace("#", "").replace("?", "")))
    # Mostly what gets past the guard (so the handlers see the variety), sometimes anything.
    headers = {"Authorization": draw(st.sampled_from(
        ["ratings"] * 6 + ["node", "none", "garbage", "expired", "basic"]))}
    content_type = draw(st.sampled_from(["application/json"] * 4 + [
        None, "text/plain", "application/json; charset=utf-8", "multipart/form-data",
        "application/JSON"]))
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(HEADER_TEXT)
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers["Host"] = draw(st.sampled_from([f"127.0.0.1:{port}"] * 4 + [f"localhost:{port}"] * 4
                                           + ["evil.example", "127.0.0.1"]))
    if draw(st.integers(0, 9)) == 0:
        headers["Host"] = draw(HEADER_TEXT)
    origin = draw(st.sampled_from([None] * 6 + [f"http://127.0.0.1:{port}",
                                                "http://evil.example", "null"]))
    if origin is not None:
        headers["Origin"] = origin
    registration = REGISTRATION.map(json.dumps)
    body = draw(st.one_of(st.none(), registration, registration, JSON.map(json.dumps),
                          st.binary(max_size=40)))
    return {"method": method, "path": path, "headers": headers, "body": body}


def test_fuzzed_requests_never_crash_nor_touch_another_service(tmp_path: Path) -> None:
    """Random methods, paths, headers and bodies with a registration token for `ratings` (or
    worse): never a 5xx, and the endpoints of `reviews` never change."""
    mp = make(tmp_path)
    loop = asyncio.new_event_loop()

    async def setup() -> tuple[aiohttp.ClientSession, str]:
        await mp.start()
        session = aiohttp.ClientSession()
        status, _, body = await send(session, mp, "POST", "/v1/registrations",
                                     token=mp.tokens.issue("operator"),
                                     body={"service": "reviews", "address": "10.0.0.9:80",
                                           "ttl": "1h", "labels": {"version": "v1"}})
        assert status == 201
        return session, body["id"]

    session, reviews_id = loop.run_until_complete(setup())
    past = TokenAuthority.load(tmp_path / "state")
    past.clock = lambda: time.time() - 7200
    tokens = {"ratings": mp.tokens.issue("registration", "ratings"),
              "node": mp.tokens.issue("node", "reviews"),
              "expired": past.issue("registration", "reviews", ttl=60),
              "garbage": "eyJhbGciOiJub25lIn0.e30."}
    before = mp.endpoints.instances(service="reviews")
    port = mp.admin_address.rsplit(":", 1)[1]

    async def one(request: dict[str, Any]) -> int:
        headers = dict(request["headers"])
        kind = headers.pop("Authorization")
        if kind in tokens:
            headers["Authorization"] = f"Bearer {tokens[kind]}"
        elif kind == "basic":
            headers["Authorization"] = "Basic cmV2aWV3czp4"
        async with session.request(request["method"], f"http://{mp.admin_address}"
                                   f"{request['path']}", headers=headers,
                                   data=request["body"], skip_auto_headers=["Content-Type"]
                                   ) as r:
            await r.read()
            return r.status

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(requests(port, reviews_id))
    def check(request: dict[str, Any]) -> None:
        status = loop.run_until_complete(one(request))
        assert status < 500, (request, status)
        assert mp.endpoints.instances(service="reviews") == before, request

    try:
        check()
    finally:
        loop.run_until_complete(session.close())
        loop.run_until_complete(mp.stop())
        loop.close()
