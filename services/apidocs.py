"""Each API's ``/docs`` without the internet: Swagger UI's files served by the service itself.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN, so on a closed hospital network
it stays blank. `install` replaces it: the page (FastAPI's `get_swagger_ui_html`) points at
``/docs/assets/...``, served from the files of the pinned PyPI package ``fastapi-offline``
(Swagger UI 5.x; only its static files are used, not its code). Why that package: it ships
Swagger UI 5, which renders the OpenAPI 3.1 FastAPI writes (``swagger-ui-bundle`` ships 4.x,
which does not), it is small (3 MB; ``swagger-ui-py`` is 25 MB and installs a top-level
``test`` package), and a pinned wheel is updated by changing one line, not by copying files.
Swagger UI is Apache-2.0 (smartbear); fastapi-offline is MIT.

The page names no other host: no favicon from FastAPI's site, no online validator badge
(``validatorUrl: null``), no ReDoc (its page would load a CDN font).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "DOCS_PATH", "assets_dir", "install"]

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def assets_dir() -> Path:
    """The folder holding Swagger UI's files (the installed ``fastapi_offline`` package's)."""
    folder = Path(str(resources.files("fastapi_offline") / "static"))
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:  # our fault (a broken install), said at start rather than as a blank page
        raise RuntimeError(f"Swagger UI files missing in {folder}: {', '.join(missing)}")
    return folder


def install(app: FastAPI) -> None:
    """Serve ``/docs`` with local assets. ``app`` must be made with ``docs_url=None`` and
    ``redoc_url=None`` (FastAPI's CDN pages)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("make the app with docs_url=None, redoc_url=None before installing the offline docs")
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} - API"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )
