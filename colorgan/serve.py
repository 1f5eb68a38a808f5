"""`colorgan serve`: a web page and an HTTP API that colorize photos (FastAPI on uvicorn;
`pip install colorgan[serve]`).

GET / is a self-contained page (nothing loaded from the internet); POST /colorize returns the photo colorized at
full resolution as PNG, with an X-Colorgan-Render id; POST /render re-renders that photo at another saturation
without the model or a new upload (the last few photos are kept in memory); POST /check says whether an image is
grayscale; GET /health; OpenAPI at /openapi.json. Inference runs in a worker thread, one request at a time on the
model, so the event loop keeps answering.
"""

import asyncio
import io
import logging
import secrets
import threading
import warnings
from collections import OrderedDict
from importlib.resources import files

from PIL import Image

from .inference import Colorizer
from .photos import exif_upright, is_grayscale
from .utils import ColorganError, require_extra

__all__ = ["create_app", "serve", "MAX_BYTES", "MAX_PIXELS"]

MAX_BYTES = 20 * 2 ** 20   # request size limit
MAX_PIXELS = 64_000_000    # larger images are refused as possible decompression bombs
KEPT_RENDERS = 4           # photos kept for /render: full-res L (float32, 4 bytes a pixel) and low-res ab each
log = logging.getLogger("colorgan.serve")


class _TooLarge(Exception):
    pass


class BodyLimit:
    "ASGI middleware: a request body over `max_bytes` gets 413, by its Content-Length or as it streams in."
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen, started, too_large = 0, False, False

        async def counted():
            nonlocal seen, too_large
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                too_large = True
                raise _TooLarge
            return message

        async def watched(message):  # the form parser turns our _TooLarge into a 400: answer 413 in its place
            nonlocal started
            if too_large:
                if not started:
                    started = True
                    await self._refuse(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        from fastapi.responses import JSONResponse
        mb = self.max_bytes / 2 ** 20
        await JSONResponse({"detail": f"request larger than {mb:g} MB"}, status_code=413)(scope, receive, send)


def _open_image(data: bytes) -> Image.Image:
    "Bytes -> a decoded PIL image; HTTPException 422 when empty, 415 when not an image, 413 when a pixel bomb."
    from fastapi import HTTPException
    if not data:
        raise HTTPException(422, "the 'image' field is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{img.width}x{img.height}")
            img.load()
            img = exif_upright(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise HTTPException(413, f"image has too many pixels (over {MAX_PIXELS:,}): {e}") from None
    except Exception:  # noqa: BLE001  any decoding failure (a malformed EXIF block: struct.error) is the upload's
        raise HTTPException(415, "the upload is not an image this server can read") from None
    return img


def create_app(model, render_size: int | None = None, max_bytes: int = MAX_BYTES, device=None,
               engine: str = "auto"):
    "The FastAPI app for a run folder or generator.pth (or a ready Colorizer)."
    require_extra("serve", "fastapi", "multipart")
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    colorizer = (model if isinstance(model, Colorizer)
                 else Colorizer.from_artifact(model, render_size, device, engine=engine))
    model_lock = threading.Lock()  # one request at a time on the model: safe on one GPU
    app = FastAPI(title="colorgan", description="Colorize black-and-white photos.", version=_version())
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    page = files("colorgan").joinpath("static/index.html").read_text()

    renders: OrderedDict[str, tuple] = OrderedDict()

    def run_model(img: Image.Image, size: int | None, saturation: float) -> tuple[str, bytes]:
        with model_lock:
            default, colorizer.render_size = colorizer.render_size, size or colorizer.render_size
            try:
                l = colorizer.lightness(img)
                ab = colorizer.predict_ab([l])[0]
            finally:
                colorizer.render_size = default
            key = secrets.token_urlsafe(12)
            renders[key] = (l, ab)
            while len(renders) > KEPT_RENDERS:
                renders.popitem(last=False)
        return key, render(l, ab, saturation)

    def render(l, ab, saturation: float) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(colorizer.combine(l, ab, saturation)).save(buf, format="PNG")
        return buf.getvalue()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return page

    @app.get("/health")
    def health():
        return {"status": "ok", "device": str(colorizer.device), "engine": colorizer.engine,
                "render_size": colorizer.render_size}

    @app.post("/colorize", responses={200: {"content": {"image/png": {}}}})
    async def colorize(image: UploadFile = File(...), render_size: int | None = Form(None, ge=32, le=2048),
                       saturation: float = Form(1.0, ge=0, le=4)):
        """The uploaded photo colorized at full resolution, as PNG; its X-Colorgan-Render header names it for
        /render."""
        img = _open_image(await image.read())
        try:
            key, png = await asyncio.to_thread(run_model, img, render_size, saturation)
        except Exception:
            log.exception("colorize failed")
            raise HTTPException(500, "colorizing failed inside the model; the server log has the details") from None
        return Response(png, media_type="image/png", headers={"X-Colorgan-Render": key})

    @app.post("/render", responses={200: {"content": {"image/png": {}}}})
    async def rerender(render_id: str = Form(...), saturation: float = Form(1.0, ge=0, le=4)):
        "A photo colorized by /colorize, rendered again at another saturation (no model call, no upload)."
        kept = renders.get(render_id)
        if kept is None:
            raise HTTPException(404, f"no photo kept under that id (the last {KEPT_RENDERS} are): upload it again")
        return Response(await asyncio.to_thread(render, *kept, saturation), media_type="image/png")

    @app.post("/check")
    async def check(image: UploadFile = File(...)):
        "Whether an image is grayscale (no colour to speak of), as the seed Flask app offered."
        img = _open_image(await image.read())
        return {"grayscale": is_grayscale(img), "mode": img.mode, "width": img.width, "height": img.height}

    @app.exception_handler(ColorganError)
    async def colorgan_error(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    return app


def _version() -> str:
    from . import __version__
    return __version__


def serve(model, host: str = "127.0.0.1", port: int = 8000, render_size: int | None = None,
          max_bytes: int = MAX_BYTES, device=None, engine: str = "auto") -> None:
    "Run the app on uvicorn until interrupted."
    require_extra("serve", "fastapi", "uvicorn", "multipart")
    import uvicorn
    uvicorn.run(create_app(model, render_size, max_bytes, device, engine), host=host, port=port)
