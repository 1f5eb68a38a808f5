import io
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from colorgan.artifacts import generator_meta, save_generator  # noqa: E402
from colorgan.models import build_generator  # noqa: E402
from colorgan.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "generator.pth"
    net = build_generator(pretrained=False, width=0.25, img_size=32)
    save_generator(net, path, generator_meta({"arch": "resnet18", "width": 0.25}, 32, "x", {}))
    return path


@pytest.fixture(scope="module")
def client(artefact):
    return TestClient(create_app(artefact, device="cpu", max_bytes=2 ** 20))


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_colorize_returns_full_resolution_png(client, astronaut):
    r = client.post("/colorize", files={"image": ("a.png", _png(astronaut.convert("L")), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == astronaut.size
    r = client.post("/colorize", files={"image": ("a.png", _png(astronaut), "image/png")}, data={"render_size": "64"})
    assert r.status_code == 200


def test_check_tells_gray_from_colour(client, astronaut):
    gray = client.post("/check", files={"image": ("g.png", _png(astronaut.convert("L")), "image/png")}).json()
    colour = client.post("/check", files={"image": ("c.png", _png(astronaut), "image/png")}).json()
    assert gray["grayscale"] is True and colour["grayscale"] is False and colour["width"] == astronaut.width


@pytest.mark.parametrize("payload, status", [
    ({"files": {"image": ("x.png", b"just some text", "text/plain")}}, 415),
    ({"files": {"image": ("big.bin", b"\0" * (2 ** 20 + 10), "application/octet-stream")}}, 413),
    ({"files": {"image": ("empty.png", b"", "image/png")}}, 422),
    ({}, 422),
])
def test_bad_requests_get_json_errors(client, payload, status):
    r = client.post("/colorize", **payload)
    assert r.status_code == status and "detail" in r.json()


def test_decompression_bomb_is_refused(client):
    bomb = Image.new("L", (9000, 9000))  # 81 MP of zeros compresses to a few hundred KB
    r = client.post("/colorize", files={"image": ("bomb.png", _png(bomb), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]


def test_model_failure_is_a_500_without_a_trace(artefact, astronaut, monkeypatch):
    app = create_app(artefact, device="cpu")
    from colorgan.inference import Colorizer
    monkeypatch.setattr(Colorizer, "__call__", lambda self, img: 1 / 0)
    r = TestClient(app, raise_server_exceptions=False).post(
        "/colorize", files={"image": ("a.png", _png(astronaut), "image/png")})
    assert r.status_code == 500 and "Traceback" not in r.text and "ZeroDivision" not in r.text


def test_health_page_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/").text
    assert "<input" in page and "http://" not in page and "https://" not in page  # loads nothing from outside
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/colorize", "/check", "/health"} <= paths.keys()


@pytest.fixture(scope="module")
def live_server(artefact):
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(artefact, device="cpu"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_bounded_load_on_loopback(live_server, astronaut):
    "About 50 requests, 8 at a time: every one answered; latency percentiles printed."
    body = _png(astronaut.resize((48, 40)))

    def one(_):
        start = time.perf_counter()
        r = httpx.post(f"{live_server}/colorize", files={"image": ("a.png", body, "image/png")}, timeout=120)
        return r.status_code, time.perf_counter() - start
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(48)))
    codes, times = zip(*results)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    print(f"\n48 requests, 8 concurrent: p50 {p50:.3f}s p90 {p90:.3f}s p99 {p99:.3f}s max {max(times):.3f}s")
    assert set(codes) == {200}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_uploads_a_photo_and_sees_it_colorized(live_server, astronaut, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = tmp_path / "old.png"
    astronaut.convert("L").save(photo)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page()
        page.goto(live_server + "/")
        page.set_input_files("#file", str(photo))
        page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=60000)
        width = page.evaluate("document.getElementById('result').naturalWidth")
        assert width == astronaut.width
        assert page.inner_text("#status") == "done"
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
