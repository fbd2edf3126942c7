"""`services.apidocs`: /docs served with Swagger UI's files from the project, no other host."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from services import apidocs


@pytest.fixture
def app() -> FastAPI:
    app = FastAPI(title="T", docs_url=None, redoc_url=None)
    apidocs.install(app)
    return app


async def test_docs_page_names_no_other_host_and_its_assets_are_served(app: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert "://" not in page.text  # every URL on it is a path of this server
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sorted(sources) == ["/docs/assets/favicon.png", "/docs/assets/swagger-ui-bundle.js",
                                   "/docs/assets/swagger-ui.css"]
        assert "url: '/openapi.json'" in page.text and '"validatorUrl": null' in page.text
        for source in sources:
            asset = await client.get(source)
            assert asset.status_code == 200 and len(asset.content) > 1000
        js = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content
        assert (await client.get("/docs/assets/nothing.js")).status_code == 404


def test_an_app_with_fastapis_cdn_docs_is_refused() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        apidocs.install(FastAPI())
