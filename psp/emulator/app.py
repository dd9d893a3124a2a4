"""The aiohttp application: Stripe's and Braintree's routes, the control routes, the pipelines around them."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from psp.emulator import control, routes
from psp.emulator.braintree import routes as braintree_routes
from psp.emulator.braintree.personality import BRAINTREE, Braintree
from psp.emulator.middleware import stripe_middleware
from psp.emulator.runtime import EMULATOR, Emulator


def build_app(
    data_dir: Path | None = None, *, api_key: str | None = None, emulator: Emulator | None = None
) -> web.Application:
    """State is replayed from ``data_dir`` (memory only when None) unless an ``emulator`` is passed in."""
    app = web.Application(middlewares=[stripe_middleware], client_max_size=1024**2)
    app[EMULATOR] = emulator if emulator is not None else Emulator.create(data_dir, api_key)
    app[BRAINTREE] = Braintree.create(data_dir, app[EMULATOR].clock)
    personalities = [*routes.ROUTES, *braintree_routes.ROUTES]
    for method, path, handler in [*personalities, *control.ROUTES, *braintree_routes.CONTROL_ROUTES]:
        app.router.add_route(method, path, handler)

    async def close_store(app: web.Application) -> None:
        await app[EMULATOR].webhooks.close()
        app[EMULATOR].store.close()

    app.on_startup.append(app[BRAINTREE].start)
    app.on_cleanup.append(app[BRAINTREE].close)
    app.on_cleanup.append(close_store)
    return app
