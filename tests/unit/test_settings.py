"""Settings: the PSP's key and base come with the rest, and no credential shows in a repr or a log."""

from __future__ import annotations

import pytest

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


def test_the_rate_limits_have_stripe_like_defaults_and_are_read_from_the_environment() -> None:
    default = Settings.from_env({})
    assert (default.key_rate_per_s, default.key_burst) == (100.0, 100)
    assert (default.failed_auth_rate_per_s, default.failed_auth_burst) == (1.0, 20)
    tuned = Settings.from_env(
        {
            "PAYRAY_KEY_RATE_PER_S": "2.5",
            "PAYRAY_KEY_BURST": "5",
            "PAYRAY_FAILED_AUTH_RATE_PER_S": "0",
            "PAYRAY_FAILED_AUTH_BURST": "3",
        }
    )
    assert (tuned.key_rate_per_s, tuned.key_burst) == (2.5, 5)
    assert (tuned.failed_auth_rate_per_s, tuned.failed_auth_burst) == (0.0, 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYRAY_KEY_RATE_PER_S", "-1"),
        ("PAYRAY_KEY_RATE_PER_S", "fast"),
        ("PAYRAY_KEY_RATE_PER_S", "inf"),
        ("PAYRAY_KEY_BURST", "0"),
        ("PAYRAY_FAILED_AUTH_BURST", "-2"),
    ],
)
def test_rate_limit_settings_that_cannot_work_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_braintree_takes_a_merchant_id_with_both_keys_and_hides_the_private_one() -> None:
    env = {
        "BRAINTREE_MERCHANT_ID": "m",
        "BRAINTREE_PUBLIC_KEY": "pub",
        "BRAINTREE_PRIVATE_KEY": "priv_secret",
        "BRAINTREE_ENVIRONMENT": "http://127.0.0.1:12111",
    }
    settings = Settings.from_env(env)
    assert (settings.braintree_merchant_id, settings.braintree_environment) == ("m", "http://127.0.0.1:12111")
    assert "priv_secret" not in repr(settings)
    assert Settings.from_env({}).braintree_merchant_id is None
    with pytest.raises(ValueError, match="BRAINTREE_PRIVATE_KEY"):
        Settings.from_env({"BRAINTREE_MERCHANT_ID": "m", "BRAINTREE_PUBLIC_KEY": "pub"})
