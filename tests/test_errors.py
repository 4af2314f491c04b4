"""Error classification, Retry-After parsing and secret redaction."""

from __future__ import annotations

import email.utils
import json

import pytest

import rakka_trio as rk


def body(**error: object) -> bytes:
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (
            429,
            body(type="insufficient_quota", code="insufficient_quota", message="quota"),
            rk.QuotaExhausted,
        ),
        (429, body(type="requests", code="rate_limit_exceeded", message="slow"), rk.RateLimited),
        (400, body(code="context_length_exceeded", message="too long"), rk.ContextLengthExceeded),
        (
            400,
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 210000 tokens > 200000 maximum",
                },
            },
            rk.ContextLengthExceeded,
        ),
        (400, body(code="content_filter", message="filtered"), rk.ContentFiltered),
        (400, body(code="content_policy_violation", message="no"), rk.ContentFiltered),
        (400, body(type="invalid_request_error", message="bad param"), rk.BadRequest),
        (
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            rk.Overloaded,
        ),
        (
            500,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            rk.Overloaded,
        ),
        (401, body(type="invalid_request_error", message="Incorrect API key"), rk.Unauthorized),
        (
            403,
            {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "denied"}},
            rk.Forbidden,
        ),
        (404, body(message="model not found"), rk.NotFound),
        (408, b"", rk.Timeout),
        (503, b"<html>Service Unavailable</html>", rk.ServerError),
        (502, None, rk.ServerError),
        (
            429,
            {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}},
            rk.RateLimited,
        ),
        (402, body(message="payment required"), rk.QuotaExhausted),
        (418, b"teapot", rk.BadRequest),
    ],
)
def test_classification(status: int, payload: object, expected: type[rk.RakkaError]) -> None:
    err = rk.classify_http_status(status, {}, payload, provider="openai", endpoint="primary")  # type: ignore[arg-type]
    assert type(err) is expected
    assert err.status == status
    assert err.provider == "openai" and err.endpoint == "primary"
    assert "openai/primary" in str(err)


def test_retryable_and_circuit_flags() -> None:
    cases: dict[type[rk.RakkaError], tuple[bool, bool]] = {
        rk.ServerError: (True, True),
        rk.Overloaded: (True, True),
        rk.Timeout: (True, True),
        rk.NetworkError: (True, True),
        rk.StreamTruncated: (True, True),
        rk.RateLimited: (True, False),
        rk.QuotaExhausted: (False, False),
        rk.BadRequest: (False, False),
        rk.ContextLengthExceeded: (False, False),
        rk.ContentFiltered: (False, False),
        rk.Unauthorized: (False, False),
        rk.CircuitOpen: (False, False),
        rk.Backpressure: (True, False),
    }
    for cls, (retryable, counts) in cases.items():
        assert (cls.retryable, cls.counts_as_circuit_failure) == (retryable, counts), cls
    assert all(issubclass(cls, rk.RakkaError) for cls in cases)


def test_quota_is_never_retryable_even_if_server_says_so() -> None:
    err = rk.classify_http_status(
        429, {"x-should-retry": "true"}, body(code="insufficient_quota", message="no credit")
    )
    assert isinstance(err, rk.QuotaExhausted)
    assert err.retryable is False


def test_should_retry_header_overrides() -> None:
    no = rk.classify_http_status(503, {"X-Should-Retry": "false"}, b"")
    assert isinstance(no, rk.ServerError) and no.retryable is False
    yes = rk.classify_http_status(400, {"x-should-retry": "true"}, b"")
    assert yes.retryable is True
    assert rk.ServerError.retryable is True  # the class default is untouched


def test_retry_after_is_attached() -> None:
    err = rk.classify_http_status(429, {"retry-after-ms": "1500", "retry-after": "9"}, b"")
    assert isinstance(err, rk.RateLimited)
    assert err.retry_after == 1.5


def test_non_error_status_rejected() -> None:
    with pytest.raises(ValueError, match="not an error status"):
        rk.classify_http_status(200, {}, b"")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250", "Retry-After": "7"}, 0.25),
        ({"retry-after-ms": "garbage", "retry-after": "7"}, 7.0),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": " 12 "}, 12.0),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert rk.parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert rk.parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert rk.parse_retry_after({"Retry-After": past}, now=now) == 0.0


def test_provider_echoed_keys_are_redacted() -> None:
    leaked = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"
    err = rk.classify_http_status(
        401, {}, body(message=f"Incorrect API key provided: {leaked}.", code="invalid_api_key")
    )
    assert leaked not in str(err)
    assert leaked not in repr(err)
    assert "***" in str(err)


def test_registered_secret_values_are_redacted_anywhere() -> None:
    secret = rk.Secret("my-internal-token-42")
    err = rk.ServerError("upstream said: token my-internal-token-42 rejected", status=500)
    assert secret.get_secret_value() not in str(err)


def test_long_messages_are_truncated() -> None:
    err = rk.classify_http_status(500, {}, b"x" * 10_000)
    assert len(str(err)) <= 500


def test_circuit_open_message() -> None:
    err = rk.CircuitOpen(
        "primary", state="forced_open", opened_at=1.0, retry_at=float("inf"), reason="incident-42"
    )
    assert "until reset" in str(err) and "incident-42" in str(err)
    assert err.retryable is False


AZURE_FILTERED = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": True, "detected": True},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}


def test_a_providers_own_rules_apply_when_it_is_named() -> None:
    azure = rk.classify_http_status(400, {}, AZURE_FILTERED, provider="azure-openai")
    assert isinstance(azure, rk.ContentFiltered)
    assert azure.reason == "jailbreak,violence"  # the categories Azure filtered
    assert azure.provider == "azure-openai"
    # the default (no provider): the shared rules, as before
    shared = rk.classify_http_status(400, {}, AZURE_FILTERED)
    assert isinstance(shared, rk.ContentFiltered) and shared.reason == "content_filter"
    # a name nothing is registered under is only a label
    labelled = rk.classify_http_status(400, {}, AZURE_FILTERED, provider="someone-else")
    assert labelled.provider == "someone-else" and labelled.reason == "content_filter"  # type: ignore[attr-defined]


def test_azure_inner_policy_code_without_an_outer_one() -> None:
    inner = {"code": "ResponsibleAIPolicyViolation"}
    body = {"error": {"code": "400", "message": "no", "innererror": inner}}
    err = rk.classify_http_status(400, {}, body, provider="azure-openai")
    assert isinstance(err, rk.ContentFiltered)


def test_stream_errors_are_classified_by_the_named_provider() -> None:
    from rakka_trio._providers import classify_stream_error

    err = classify_stream_error(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        provider="anthropic",
        endpoint="e",
    )
    assert isinstance(err, rk.Overloaded)
    assert (err.provider, err.endpoint, err.status) == ("anthropic", "e", None)
