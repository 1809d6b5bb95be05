"""Every bundled example loads, and the realistic gateway behaves as its comments say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import http_get
from test_cli import Up, copy_with_free_ports

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir() and p.name != "envoy")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(example: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "meshpilot", "validate", str(example)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_gateway_example_through_envoy(tmp_path: Path) -> None:
    fixed = [8080, 8081, 9101, 9102, 9111, 9112, 9113, 9121, 9131]
    ports = copy_with_free_ports(ROOT / "examples" / "gateway", tmp_path / "gateway", fixed)
    public, internal = ports[8080], ports[8081]
    up = Up(tmp_path / "gateway", tmp_path / "up.log")

    def get(path: str, host: str = "shop.example.com", port: int = public, **headers: str):
        return http_get(f"http://127.0.0.1:{port}{path}", {"Host": host, **headers})

    try:
        status, headers, body = get("/")
        assert status == 200 and json.loads(body)["backend"].startswith("storefront")
        assert headers["x-frame-options"] == "DENY" and "x-backend" not in headers
        status, _, body = get("/api/v1/orders")
        seen = json.loads(body)
        assert status == 200 and seen["path"] == "/v1/orders"
        assert seen["backend"] in {f"orders-api-stable:{ports[p]}" for p in (9111, 9112)}
        canary = json.loads(get("/api/v1/orders", **{"x-canary": "true"})[2])
        assert canary["backend"] == f"orders-api-canary:{ports[9113]}"
        assert get("/robots.txt")[2].startswith(b"User-agent: *")
        status, headers, _ = get("/cart", host="www.shop.example.com")
        # The port the request came to is kept (issue 14, bug 4: Envoy alone would drop it).
        assert status == 301 and headers["location"] == f"http://shop.example.com:{public}/cart"
        assert get("/search")[0] == 200  # no q: the storefront catch-all, not search
        assert get("/status", port=internal) == (200, get("/status", port=internal)[1], b"ok\n")
        assert get("/nothing", port=internal)[0] == 404
    finally:
        code = up.stop()
    assert code == 0, up.log.read_text()
