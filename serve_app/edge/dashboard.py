"""The ops page's edge: its static files, and the session an operator opens with the admin key.

The key is typed into a form and posted, never put in a URL. What comes back is a cookie that proves the key
was known: an expiry and an HMAC of it under the admin key, so every replica checks it without storing
anything, and changing the admin key ends every session. The cookie is ``HttpOnly`` and ``SameSite=Strict``,
and the page loads nothing from outside the app (its Content-Security-Policy says so).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from pathlib import Path
from urllib.parse import parse_qs

from starlette.responses import RedirectResponse, Response

from payray.errors import InvalidRequest

ASSETS = Path(__file__).parent / "ops_page"
#: The files the page is made of, by the name in its URL: nothing else under /dashboard/ is served.
FILES = {"page.js": "text/javascript", "page.css": "text/css"}
COOKIE = "payray_ops"
SESSION_S = 8 * 3600
#: A login form is a key and nothing else: a body larger than this is not one.
LOGIN_BODY_LIMIT = 4096
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _signature(admin_key: str, expires: int) -> str:
    return hmac.new(admin_key.encode(), f"payray-ops-page:{expires}".encode(), hashlib.sha256).hexdigest()


def session_value(admin_key: str, now: float) -> str:
    expires = int(now) + SESSION_S
    return f"{expires}.{_signature(admin_key, expires)}"


def session_valid(value: str | None, admin_key: str | None, now: float) -> bool:
    """True for a cookie this deployment's admin key signed and that has not expired."""
    if not value or not admin_key:
        return False
    expires_text, _, signature = value.partition(".")
    if not expires_text.isdigit() or int(expires_text) < now:
        return False
    return hmac.compare_digest(signature, _signature(admin_key, int(expires_text)))


def login_key(body: bytes, content_type: str | None) -> str:
    """The admin key from the login form's body; ``InvalidRequest`` for anything else."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest("The login form posts application/x-www-form-urlencoded.", param="key")
    if len(body) > LOGIN_BODY_LIMIT:
        raise InvalidRequest("The login form is larger than a key.", param="key")
    try:
        fields = parse_qs(body.decode(), strict_parsing=False, max_num_fields=4)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("The login form could not be read.", param="key") from exc
    keys = fields.get("key", [])
    if len(keys) != 1 or not keys[0].strip():
        raise InvalidRequest("Type the admin key.", param="key")
    return keys[0].strip()


def page(name: str, status: int = 200, message: str = "") -> Response:
    """``index.html`` or ``login.html``; a login page may say why the last try failed."""
    html = (ASSETS / name).read_text()
    html = html.replace("{{message}}", _escape(message))
    return Response(html, status_code=status, media_type="text/html; charset=utf-8", headers=HEADERS)


def asset(name: str) -> Response | None:
    media_type = FILES.get(name)
    if media_type is None:
        return None
    return Response((ASSETS / name).read_bytes(), media_type=media_type, headers=HEADERS)


def logged_in(admin_key: str, secure: bool, now: float | None = None) -> Response:
    """To the page, carrying a new session."""
    response = RedirectResponse("/dashboard", status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE, session_value(admin_key, time.time() if now is None else now), max_age=SESSION_S,
        path="/", secure=secure, httponly=True, samesite="strict",
    )  # fmt: skip
    return response


def logged_out() -> Response:
    response = RedirectResponse("/dashboard", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def since_param(value: str | None) -> float | None:
    """``?since=`` (unix seconds) as a number; ``InvalidRequest`` for anything else."""
    if value is None:
        return None
    try:
        since = float(value)
    except ValueError:
        since = math.nan
    if not math.isfinite(since) or since < 0:
        raise InvalidRequest("since must be a time in unix seconds", param="since")
    return since


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
