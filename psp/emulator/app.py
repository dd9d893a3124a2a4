"""The aiohttp application: Stripe's routes, the control routes and the pipeline around them."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from psp.emulator import control, routes
from psp.emulator.middleware import stripe_middleware
from psp.emulator.runtime import EMULATOR, Emulator


def build_app(
    data_dir: Path | None = None, *, api_key: str | None = None, emulator: Emulator | None = None
) -> web.Application:
    """State is replayed from ``data_dir`` (memory only when None) unless an ``emulator`` is passed in."""
    app = web.Application(middlewares=[stripe_middleware], client_max_size=1024**2)
    app[EMULATOR] = emulator if emulator is not None else Emulator.create(data_dir, api_key)
    for method, path, handler in [*routes.ROUTES, *control.ROUTES]:
        app.router.add_route(method, path, handler)

    async def close_store(app: web.Application) -> None:
        await app[EMULATOR].webhooks.close()
        app[EMULATOR].store.close()

    app.on_cleanup.append(close_store)
    return app
