"""The web app's way to the services: their HTTP APIs, as the signed-in user.

One `httpx.AsyncClient` per upstream (listener, enrollment, notifier), each with the web
app's bearer token; every call names the signed-in user in ``X-WPC-Acting-User``, so the
API authorises and audits it as that user (`services.auth.current_user`). No access rule
lives here.

Errors (tree)::

    ApiError                 an API call that did not give what the page needs
    ├── NotAllowed           403: the user may not see or do this
    ├── NotFound             404
    ├── Rejected             409 / 422 / other 4xx: the API's reason is shown to the user
    └── Unavailable          no answer, a timeout or a 5xx: "try again"

The app's error handler turns each into a page with its status (never a 500).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from services.auth import ACTING_USER_HEADER


class ApiError(Exception):
    status = 502
    title = "The service did not answer"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotAllowed(ApiError):
    status = 403
    title = "Not allowed"


class NotFound(ApiError):
    status = 404
    title = "Not found"


class Rejected(ApiError):
    status = 400
    title = "Not done"

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


class Unavailable(ApiError):
    status = 502
    title = "A service is unavailable"


UPSTREAMS = ("listener", "enrollment", "notifier")


class ApiClient:
    def __init__(self, urls: Mapping[str, str], token: str, *, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``urls``: upstream name (`UPSTREAMS`) -> base URL."""
        headers = {"Authorization": f"Bearer {token}"}
        self._clients = {
            name: httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, transport=transport)
            for name, url in urls.items()
        }

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def get(self, upstream: str, path: str, user: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self._call(upstream, "GET", path, user, params=params)

    async def post(self, upstream: str, path: str, user: str, body: Any = None) -> Any:
        return await self._call(upstream, "POST", path, user, json=body)

    async def ready(self, upstream: str) -> bool:
        """Whether ``upstream`` says it is alive (/healthz; no user)."""
        try:
            response = await self._clients[upstream].get("/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _call(self, upstream: str, method: str, path: str, user: str, **kwargs: Any) -> Any:
        clean = {k: v for k, v in (kwargs.get("params") or {}).items() if v not in (None, "")}
        kwargs["params"] = clean or None
        try:
            response = await self._clients[upstream].request(
                method, path, headers={ACTING_USER_HEADER: user}, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unavailable(f"the {upstream} service did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"the {upstream} service cannot be reached ({type(exc).__name__})") from exc
        return _answer(upstream, response)


def _answer(upstream: str, response: httpx.Response) -> Any:
    status = response.status_code
    if status < 300:
        return response.json() if response.content else None
    detail = _detail(response)
    if status == 403:
        raise NotAllowed(detail or "your role does not allow this")
    if status == 404:
        raise NotFound(detail or "there is no such record")
    if status == 401:
        raise Unavailable(f"the {upstream} service does not accept the web app's token (WPC_WEB_API_TOKEN)")
    if status < 500:
        raise Rejected(detail or f"the {upstream} service refused the request", status)
    raise Unavailable(f"the {upstream} service failed (HTTP {status})")


def _detail(response: httpx.Response) -> str:
    """The API's reason (FastAPI's ``detail``), as one line of text."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # validation errors: their messages, not the input
        return "; ".join(str(d.get("msg", "")) for d in detail if isinstance(d, dict))
    return ""
