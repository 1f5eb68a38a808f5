import io
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from colorgan.serve import create_app  # noqa: E402


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


def test_render_changes_saturation_without_a_new_upload(client, astronaut):
    gray = astronaut.convert("L")
    r = client.post("/colorize", files={"image": ("a.png", _png(gray), "image/png")}, data={"saturation": "1.5"})
    assert r.status_code == 200
    key = r.headers["X-Colorgan-Render"]
    spread = {}
    for saturation in ("0", "1", "1.5"):
        again = client.post("/render", data={"render_id": key, "saturation": saturation})
        assert again.status_code == 200
        rgb = np.asarray(Image.open(io.BytesIO(again.content)), dtype=np.int16)
        spread[saturation] = float((rgb.max(-1) - rgb.min(-1)).mean())
        if saturation == "1.5":
            assert again.content == r.content  # the same photo, rendered again from what was kept
    assert spread["0"] == 0 and (np.asarray(Image.open(io.BytesIO(client.post(
        "/render", data={"render_id": key, "saturation": "0"}).content)))[..., 0] == np.asarray(gray)).all()
    assert spread["0"] < spread["1"] < spread["1.5"]
    assert client.post("/render", data={"render_id": "nope", "saturation": "1"}).status_code == 404
    assert client.post("/render", data={"render_id": key, "saturation": "9"}).status_code == 422


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


def test_a_chunked_upload_over_the_limit_gets_413_not_400(client):
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks():  # no Content-Length: the limit must hold as the body streams in (25 MB against 1 MB here)
        yield head
        for _ in range(25):
            yield b"\xff" * 2 ** 20
        yield f"\r\n--{boundary}--\r\n".encode()
    kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/colorize", content=chunks(), headers=kind)
    assert r.status_code == 413 and "larger than 1 MB" in r.json()["detail"]


def test_an_image_whose_exif_cannot_be_read_is_a_415(client, astronaut, monkeypatch):
    import struct

    import colorgan.serve
    monkeypatch.setattr(colorgan.serve, "exif_upright", lambda img: struct.unpack(">I", b"\0"))
    r = client.post("/colorize", files={"image": ("a.png", _png(astronaut), "image/png")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]


def test_decompression_bomb_is_refused(client):
    bomb = Image.new("L", (9000, 9000))  # 81 MP of zeros compresses to a few hundred KB
    r = client.post("/colorize", files={"image": ("bomb.png", _png(bomb), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]


def test_model_failure_is_a_500_without_a_trace(artefact, astronaut, monkeypatch):
    app = create_app(artefact, device="cpu")
    from colorgan.inference import Colorizer
    monkeypatch.setattr(Colorizer, "predict_ab", lambda self, lightness: 1 / 0)
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
def test_browser_page_states_empty_busy_refused_and_compared(live_server, astronaut, tmp_path):
    """Each state of the page, checked in its DOM and kept as a headless-Chromium screenshot in tmp_path (or in
    $COLORGAN_SCREENSHOTS): empty, busy, a refused file, the before/after comparison, a re-render at saturation 0."""
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("COLORGAN_SCREENSHOTS", tmp_path))
    photo, junk = tmp_path / "old.png", tmp_path / "notes.png"
    astronaut.convert("L").save(photo)
    junk.write_text("not an image")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"]
    visible = "el => el.offsetParent !== null"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(live_server + "/")
        assert page.eval_on_selector("#empty", visible) and not page.eval_on_selector("#result", visible)
        assert not page.eval_on_selector("#download", visible)  # nothing to download yet, no broken images
        page.screenshot(path=str(shots / "1-empty.png"))

        held = []
        page.route("**/colorize", lambda route: held.append(route))  # held: the page must show it is busy
        page.set_input_files("#file", str(junk))
        page.wait_for_selector("#busy", state="visible")
        assert "colorizing notes.png" in page.inner_text("#status")
        page.screenshot(path=str(shots / "2-busy.png"))
        held[0].continue_()
        page.unroute("**/colorize")
        page.wait_for_selector("#status.error")
        assert "not an image" in page.inner_text("#status") and page.eval_on_selector("#busy", "el => el.hidden")
        page.screenshot(path=str(shots / "3-refused.png"))

        page.set_input_files("#file", str(photo))
        page.wait_for_function("document.getElementById('after').naturalWidth > 0", timeout=60000)
        page.wait_for_function("document.getElementById('before').naturalWidth > 0")
        assert page.evaluate("document.getElementById('after').naturalWidth") == astronaut.width
        assert page.inner_text("#message") == "done" and not page.eval_on_selector("#empty", visible)
        assert page.get_attribute("#download", "download") == "old_colorized.png"
        page.fill("#split", "30")
        assert "30%" in page.eval_on_selector("#after", "el => el.style.clipPath")
        page.screenshot(path=str(shots / "4-compared.png"))

        before = page.get_attribute("#after", "src")
        with page.expect_response("**/render") as answer:
            page.fill("#saturation", "0")
            page.dispatch_event("#saturation", "change")
        assert answer.value.status == 200
        page.wait_for_function(f"document.getElementById('after').src !== {before!r}")
        page.wait_for_function("document.getElementById('after').complete")
        assert page.evaluate(GRAY_CHECK)  # saturation 0: every pixel R == G == B
        page.screenshot(path=str(shots / "5-saturation-0.png"))
        browser.close()


GRAY_CHECK = """() => {
  const img = document.getElementById('after'), c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i] !== d[i + 2]) return false;
  return true;
}"""
