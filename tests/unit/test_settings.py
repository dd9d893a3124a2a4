"""Settings: the PSP's key and base come with the rest, and no credential shows in a repr or a log."""

from __future__ import annotations

from payray.settings import Settings


def test_the_psp_key_and_base_are_read_from_the_stripe_variables() -> None:
    settings = Settings.from_env({"STRIPE_API_KEY": "sk_live_x", "STRIPE_API_BASE": "http://psp:12111"})
    assert (settings.psp_api_key, settings.psp_api_base) == ("sk_live_x", "http://psp:12111")
    assert (Settings.from_env({}).psp_api_key, Settings.from_env({}).psp_api_base) == (None, None)


def test_the_repr_shows_no_key_secret_or_url_password() -> None:
    settings = Settings(
        database_url="postgresql://payray:hunter2@db:5432/payray",
        redis_url="redis://:redispass@cache:6379/0",
        psp_api_key="sk_live_secret",
        admin_key="sk_admin_secret",
        stripe_webhook_secrets=("whsec_secret",),
    )
    shown = repr(settings)
    for secret in ("hunter2", "redispass", "sk_live_secret", "sk_admin_secret", "whsec_secret"):
        assert secret not in shown
    assert "postgresql://payray:***@db:5432/payray" in shown
    assert "psp_api_key='***'" in shown and "fee_bps=290" in shown
    assert "psp_api_key=None" in repr(Settings())
