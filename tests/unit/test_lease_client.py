"""The lease transport's pure parts: settings from the environment, backoff, trust material.

The transport itself (retries, TLS, status codes) runs against a loopback HTTPS server in
test_lease_worker.py.
"""

from __future__ import annotations

import random

import pytest

from gpubatch.worker.lease_client import Backoff, LeaseClient, LeaseRefused, LeaseSettings

pytestmark = pytest.mark.unit

ENVIRON = {
    "GPUBATCH_LEASE_URL": "https://gpubatch-lease.gpubatch-system.svc:8443/v1/lease",
    "GPUBATCH_LEASE_CA": "(PEM)",
    "GPUBATCH_LEASE_TOKEN_FILE": "/var/run/secrets/gpubatch/token",
    "GPUBATCH_BATCH_UID": "0b7c",
}


def test_settings_come_from_the_pods_environment() -> None:
    settings = LeaseSettings.from_env(ENVIRON)

    assert settings == LeaseSettings(
        url=ENVIRON["GPUBATCH_LEASE_URL"],
        ca_pem="(PEM)",
        token_file="/var/run/secrets/gpubatch/token",
        batch_uid="0b7c",
    )


def test_every_missing_or_empty_variable_is_named() -> None:
    environ = dict(ENVIRON, GPUBATCH_LEASE_CA=" ")
    del environ["GPUBATCH_BATCH_UID"]

    with pytest.raises(LeaseRefused, match="GPUBATCH_LEASE_CA, GPUBATCH_BATCH_UID must be set"):
        LeaseSettings.from_env(environ)


def test_a_plain_http_url_is_refused_rather_than_sending_the_token_in_clear() -> None:
    environ = dict(ENVIRON, GPUBATCH_LEASE_URL="http://operator:8080/v1/lease")

    with pytest.raises(LeaseRefused, match="must be an https:// URL"):
        LeaseSettings.from_env(environ)


def test_a_ca_that_is_not_a_certificate_says_what_the_variable_must_hold() -> None:
    settings = LeaseSettings.from_env(ENVIRON)

    with pytest.raises(LeaseRefused, match="GPUBATCH_LEASE_CA is not a PEM certificate"):
        LeaseClient(settings)


def test_backoff_doubles_from_the_first_delay_to_the_cap_with_jitter_below_each_step() -> None:
    backoff = Backoff(first=0.2, cap=10.0, rng=random.Random(7))

    delays = [backoff.next_delay() for _ in range(10)]

    ceilings = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0, 10.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule


def test_backoff_starts_again_from_the_first_delay_after_an_answer() -> None:
    backoff = Backoff(first=0.2, cap=10.0, rng=random.Random(7))
    for _ in range(8):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() <= 0.2
