"""The labeling web app (Starlette + Jinja2, served by uvicorn): one page per pair, a JSON API
the page and scripts share, and a stats page.

Model outputs reach the page only through Jinja2 autoescaping (never as markup), and a
Content-Security-Policy allows only this page's own nonce-tagged script besides. Every POST
carries an ``X-CSRF-Token`` header (an HMAC of the annotator's name under a secret kept in the
database) and a JSON body, which a cross-site form can send neither of. With annotator tokens the
annotator is named by ``Authorization: Bearer <token>`` or the cookie set by opening
``/?token=<token>`` once; without them (127.0.0.1 only) everyone is "local".

API: GET /api/next, POST /api/label {pair_id, choice: left|right|tie|both_bad, reason?, ideal?},
POST /api/undo, GET /api/progress, GET /api/stats, GET /api/session (the CSRF token).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lightning_rlhf.label.db import LabelDB, LabelDBError
from lightning_rlhf.label.queue import add_label, labels, next_pair, progress, undo_last
from lightning_rlhf.label.stats import agreement_report, json_safe

LOCAL = "local"
_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _secret(db: LabelDB) -> bytes:
    with db.transaction() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO meta VALUES ('csrf_secret', ?)", (secrets.token_hex(32),)
        )
        return conn.execute("SELECT value FROM meta WHERE key='csrf_secret'").fetchone()[0].encode()


class LabelApp:
    """The app's state and endpoints over ``db``. ``tokens``: token -> annotator name (empty:
    the one annotator "local"). ``lease_s``: how long a shown, unlabelled pair stays reserved
    for its annotator (``queue.next_pair``)."""

    def __init__(
        self, db: LabelDB, tokens: dict[str, str] | None = None, lease_s: float = 1800.0
    ) -> None:
        self.db = db
        self.lease_s = lease_s
        self.tokens = dict(tokens or {})
        for token, name in self.tokens.items():  # the database keeps a hash, never the token
            db.ensure_annotator(name, hashlib.sha256(token.encode()).hexdigest())
        names = list(self.tokens.values()) or [LOCAL]
        if not self.tokens:
            db.ensure_annotator(LOCAL)
        self.ids = {name: db.annotator_id(name) for name in names}
        self.secret = _secret(db)

    def csrf_for(self, name: str) -> str:
        return hmac.new(self.secret, name.encode(), hashlib.sha256).hexdigest()

    def who(self, request: Request) -> str:
        if not self.tokens:
            return LOCAL
        header = request.headers.get("authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.cookies.get("label_token")
        for known, name in self.tokens.items():
            if token and hmac.compare_digest(token, known):
                return name
        raise _Denied(401, "unknown or missing annotator token: open the link with ?token=...")

    async def posted(self, request: Request) -> tuple[str, dict]:
        """The annotator and JSON body of a state-changing request, its CSRF token checked."""
        name = self.who(request)
        if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), self.csrf_for(name)):
            raise _Denied(403, "missing or wrong X-CSRF-Token header; reload the page")
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            raise _Denied(415, "POST a JSON body (Content-Type: application/json)")
        try:
            body = json.loads(await request.body())
        except ValueError as err:
            raise _Denied(400, f"the body is not JSON: {err}") from err
        if not isinstance(body, dict):
            raise _Denied(400, "the body must be a JSON object")
        return name, body

    async def page(self, request: Request) -> Response:
        if self.tokens and "token" in request.query_params:
            response = RedirectResponse("/", 303)  # the token leaves the address bar
            token = request.query_params["token"]
            response.set_cookie("label_token", token, httponly=True, samesite="strict")
            return response
        try:
            name = self.who(request)
        except _Denied as err:
            return HTMLResponse(_TEMPLATES.get_template("denied.html").render(error=err), 401)
        nonce = secrets.token_urlsafe(16)
        html = _TEMPLATES.get_template("label.html").render(
            annotator=name,
            pair=next_pair(self.db, self.ids[name], lease_s=self.lease_s),
            csrf=self.csrf_for(name),
            nonce=nonce,
            progress=progress(self.db),
            saved=request.query_params.get("saved"),
        )
        return HTMLResponse(html, headers=_headers(nonce))

    async def api_next(self, request: Request) -> Response:
        pair = next_pair(self.db, self.ids[self.who(request)], lease_s=self.lease_s)
        return JSONResponse(pair or {"done": True})

    async def api_label(self, request: Request) -> Response:
        name, body = await self.posted(request)
        if not isinstance(body.get("pair_id"), int):
            raise _Denied(400, "pair_id must be an integer")
        text = {k: body[k] if isinstance(body.get(k), str) else None for k in ("reason", "ideal")}
        label_id = add_label(self.db, self.ids[name], body["pair_id"], body.get("choice"), **text)
        return JSONResponse({"ok": True, "label_id": label_id, "progress": progress(self.db)})

    async def api_undo(self, request: Request) -> Response:
        name, _ = await self.posted(request)
        pair_id = undo_last(self.db, self.ids[name])
        return JSONResponse({"ok": pair_id is not None, "pair_id": pair_id})

    async def api_session(self, request: Request) -> Response:
        name = self.who(request)
        return JSONResponse({"annotator": name, "csrf": self.csrf_for(name)})

    async def api_progress(self, request: Request) -> Response:
        self.who(request)
        return JSONResponse(progress(self.db))

    async def api_stats(self, request: Request) -> Response:
        self.who(request)
        report = agreement_report(labels(self.db))
        return JSONResponse(json_safe(report) | {"progress": progress(self.db)})

    async def stats_page(self, request: Request) -> Response:
        self.who(request)
        nonce = secrets.token_urlsafe(16)
        html = _TEMPLATES.get_template("stats.html").render(
            report=agreement_report(labels(self.db)), progress=progress(self.db), nonce=nonce
        )
        return HTMLResponse(html, headers=_headers(nonce))


def _guarded(handler):
    """The handler, with refusals and database errors answered as JSON {"error": ...}."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _Denied as err:
            return JSONResponse({"error": str(err)}, err.status)
        except LabelDBError as err:
            return JSONResponse({"error": str(err)}, 409)

    return endpoint


def create_app(
    db: LabelDB,
    tokens: dict[str, str] | None = None,
    local_only: bool = True,
    lease_s: float = 1800.0,
):
    """The ASGI app. ``local_only``: accept only Host headers naming this machine (a guard
    against DNS rebinding in the token-less mode)."""
    app = LabelApp(db, tokens, lease_s)
    routes = [
        Route("/", app.page),
        Route("/stats", _guarded(app.stats_page)),
        Route("/api/next", _guarded(app.api_next)),
        Route("/api/label", _guarded(app.api_label), methods=["POST"]),
        Route("/api/undo", _guarded(app.api_undo), methods=["POST"]),
        Route("/api/session", _guarded(app.api_session)),
        Route("/api/progress", _guarded(app.api_progress)),
        Route("/api/stats", _guarded(app.api_stats)),
    ]
    hosts = ["127.0.0.1", "localhost", "[::1]"] if local_only else ["*"]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    return Starlette(routes=routes, middleware=middleware)


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
