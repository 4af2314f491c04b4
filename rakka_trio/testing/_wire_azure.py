"""Azure OpenAI chat completions on deployment URLs, as the mock speaks them.

``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` with an ``api-key``
header (or an Entra ID bearer token). The stream is OpenAI's plus Azure's content filtering: a
first chunk with ``prompt_filter_results`` and empty ``choices``, ``content_filter_results`` on
every choice that carries output, ``finish_reason: content_filter`` with the filtered category
marked ``filtered: true``; a filtered prompt is an HTTP 400 ``content_filter`` error whose
``innererror`` says ``ResponsibleAIPolicyViolation``. Errors carry Azure's string codes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from ._plan import Frame, IdSource, ProviderStream, RateSnapshot, ReplyPlan, Route, bearer, sse
from ._wire_openai import OpenAIChatStream, OpenAIChatWire

if TYPE_CHECKING:
    from ._server import HttpRequest

__all__ = ["AzureChatStream", "AzureWire", "filter_results"]

_CATEGORIES: Final = ("hate", "self_harm", "sexual", "violence")
_AZURE_CODES: Final[dict[int, tuple[str, str]]] = {
    400: ("BadRequest", "Invalid request."),
    401: (
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
    ),
    403: ("403", "Forbidden."),
    404: ("DeploymentNotFound", "The API deployment for this resource does not exist."),
    429: (
        "429",
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier.",
    ),
    500: ("InternalServerError", "The server had an error while processing your request."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request."),
}


def filter_results(filtered: str | None = None) -> dict[str, Any]:
    """A ``content_filter_results`` object, every category safe except ``filtered``."""
    out: dict[str, Any] = {}
    for name in _CATEGORIES:
        hit = name == filtered
        out[name] = {"filtered": hit, "severity": "high" if hit else "safe"}
    return out


class AzureChatStream(OpenAIChatStream):
    """OpenAI's chunks with Azure's prompt and content filter results."""

    def prelude(self) -> Iterator[Frame]:
        prompt = [
            {
                "prompt_index": 0,
                "content_filter_results": filter_results()
                | {"jailbreak": {"filtered": False, "detected": False}},
            }
        ]
        obj = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": prompt,
        }
        yield Frame(sse(obj), "meta")

    def choice_extras(self, finish: str | None, content: bool) -> dict[str, Any]:
        if finish == "content_filter":
            return {"content_filter_results": filter_results("violence")}
        return {"content_filter_results": filter_results()} if content else {}


class AzureWire(OpenAIChatWire):
    """``/openai/deployments/{deployment}/chat/completions`` (the deployment is the model)."""

    route: Route = "azure-openai"

    def model(self, body: Mapping[str, Any], path_model: str | None) -> str | None:
        return path_model  # the deployment in the path, whatever the body says

    def validate(self, body: Mapping[str, Any], request: HttpRequest) -> str | None:
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return "'stream' must be a boolean."
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "Missing required parameter: 'messages'."
        if not any(k == "api-version" and v for k, v in parse_qsl(request.query)):
            return "Missing API version: the 'api-version' query parameter is required."
        return None

    def credential(self, request: HttpRequest, query: Mapping[str, str]) -> str | None:
        return request.header("api-key") or bearer(request)

    def response_headers(self, ids: IdSource) -> list[tuple[str, str]]:
        return [("apim-request-id", ids.hex(32)), ("x-ms-region", "Sweden Central")]

    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        return AzureChatStream(plan)

    def error_body(
        self,
        status: int,
        *,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        request_id: str = "",
        retry_after: float | None = None,
    ) -> dict[str, Any]:
        dcode, dmsg = _AZURE_CODES.get(
            status, ("InternalServerError" if status >= 500 else "BadRequest", "Error.")
        )
        err: dict[str, Any] = {
            "code": code or error_type or dcode,
            "message": message or dmsg,
            "param": None,
            "type": None,
        }
        if code == "content_filter":
            err["status"] = status
            err["innererror"] = {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": filter_results("hate")
                | {"jailbreak": {"filtered": False, "detected": False}},
            }
        return {"error": err}

    def prompt_filter_error(self, request_id: str) -> tuple[int, dict[str, Any]] | None:
        return 400, self.error_body(
            400,
            code="content_filter",
            message="The response was filtered due to the prompt triggering Azure OpenAI's "
            "content management policy. Please modify your prompt and retry.",
        )

    def rate_limit_headers(self, snap: RateSnapshot, *, wall_now: float) -> list[tuple[str, str]]:
        # Azure reports what remains, not the limits or their reset times.
        return [
            ("x-ratelimit-remaining-requests", str(snap.requests_remaining)),
            ("x-ratelimit-remaining-tokens", str(snap.tokens_remaining)),
        ]
