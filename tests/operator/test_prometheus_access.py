"""How the operator reaches Prometheus: credentials from files, CA, skip-verify, headers, and
credentials never sent to a URL a pool names."""

from __future__ import annotations

import pytest

from carpool_operator import settings
from carpool_operator.control import pool_access
from carpool_operator.prometheus import MetricsUnavailable, PrometheusAccess, _refusal


def test_options_build_the_access(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = settings.parse(
        [
            "--prometheus-url", "https://prom:9090",
            "--prometheus-bearer-token-file", str(token),
            "--prometheus-ca-file", "/ca.crt",
            "--prometheus-header", "X-Scope-OrgID=team-a",
        ]
    )  # fmt: skip
    connection = config.prometheus_access().connect()
    assert connection.headers == {"X-Scope-OrgID": "team-a", "Authorization": "Bearer s3cret"}
    assert connection._session.verify == "/ca.crt"


def test_basic_auth_reads_its_password_file(tmp_path) -> None:
    password = tmp_path / "password"
    password.write_text("pw")
    access = PrometheusAccess(
        "http://p", basic_auth_username="u", basic_auth_password_file=str(password)
    )
    assert access.connect().auth == ("u", "pw")


def test_skip_verify_turns_tls_verification_off() -> None:
    assert (
        PrometheusAccess("https://p", insecure_skip_verify=True).connect()._session.verify is False
    )


def test_tls_is_verified_by_default() -> None:
    assert PrometheusAccess("https://p").connect()._session.verify is True


def test_a_missing_token_file_says_which() -> None:
    with pytest.raises(MetricsUnavailable, match="/nowhere/token"):
        PrometheusAccess("http://p", bearer_token_file="/nowhere/token").connect()


def test_a_header_without_a_value_separator_is_refused() -> None:
    with pytest.raises(SystemExit):
        settings.parse(["--prometheus-header", "X-Scope-OrgID"])


def test_a_pools_own_url_gets_no_credentials_or_headers() -> None:
    access = PrometheusAccess(
        "http://prom:9090", bearer_token_file="/t", headers=(("X-Scope-OrgID", "a"),)
    )
    own = pool_access({"spec": {"prometheus": {"url": "http://elsewhere:9090"}}}, access)
    assert (own.url, own.bearer_token_file, own.headers) == ("http://elsewhere:9090", "", ())
    assert own.source == "spec.prometheus.url"
    same = pool_access({"spec": {"prometheus": {"url": "http://prom:9090/"}}}, access)
    assert same is access


def test_a_401_names_the_credential_settings() -> None:
    message = _refusal(PrometheusAccess("http://p"), "HTTP Status Code 401 (b'Unauthorized')")
    assert "answered 401" in message and "operator.prometheus.bearerTokenSecret" in message


def test_a_401_on_a_pools_own_url_explains_credentials_stay_home() -> None:
    access = PrometheusAccess("http://q", source="spec.prometheus.url")
    message = _refusal(access, "HTTP Status Code 401 (b'')")
    assert "only to its own --prometheus-url" in message
