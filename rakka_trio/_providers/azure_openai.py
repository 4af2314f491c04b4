"""Azure OpenAI chat completions on deployment URLs.

``POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=...`` with an
``api-key`` header (or a Microsoft Entra ID bearer token). The stream is OpenAI's chunk stream
plus Azure's content filtering: a first chunk with ``prompt_filter_results`` (empty
``choices``), ``content_filter_results`` on the choices, ``finish_reason: content_filter`` when
the output was filtered, and HTTP 400 ``content_filter`` errors (inner code
``ResponsibleAIPolicyViolation``) when the prompt was.

Endpoint options (``EndpointConfig.provider_options``): ``deployment`` (default: the request's
model), ``api_version`` (default :data:`DEFAULT_API_VERSION`), ``auth`` (``api-key``, the
default, or ``bearer`` for an Entra ID token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._base import as_map, as_str
from ._classify import ErrorClassifier, ErrorFields
from ._provider import HttpCall
from .openai_chat import OpenAIChatAdapter, OpenAIChatProvider, chat_body

if TYPE_CHECKING:
    from .._credentials import Secret
    from .._request import ChatRequest

__all__ = ["DEFAULT_API_VERSION", "AzureChatAdapter", "AzureErrors", "AzureOpenAIProvider"]

DEFAULT_API_VERSION = "2024-10-21"
"""The Azure OpenAI data-plane API version used unless ``api_version`` is set."""

_AUTH_MODES = ("api-key", "bearer")


def filtered_categories(results: Any) -> list[str]:
    """The categories a ``content_filter_results`` object marks ``filtered: true``."""
    return [
        str(name)
        for name, verdict in as_map(results).items()
        if as_map(verdict).get("filtered") is True
    ]


class AzureErrors(ErrorClassifier):
    """The shared vocabulary plus Azure's content-filter error: ``code: content_filter`` with
    ``innererror.code: ResponsibleAIPolicyViolation``; the reason names the filtered
    categories from ``innererror.content_filter_result``."""

    def fields(self, body: Any) -> ErrorFields:
        """Azure puts the policy verdict in ``innererror``: promote its code when the outer
        code says nothing more specific."""
        found = super().fields(body)
        inner = as_map(found.error.get("innererror"))
        inner_code = as_str(inner.get("code"))
        if inner_code and (found.code is None or found.code.isdigit()):
            return ErrorFields(
                type=found.type,
                code=inner_code,
                number=found.number,
                message=found.message,
                error=found.error,
            )
        return found

    def filter_reason(self, found: ErrorFields) -> str | None:
        """The filtered categories (``"jailbreak"``, ``"hate,violence"`` ...) if listed."""
        inner = as_map(found.error.get("innererror"))
        categories = filtered_categories(inner.get("content_filter_result"))
        return ",".join(categories) if categories else super().filter_reason(found)


AZURE_ERRORS = AzureErrors()


class AzureChatAdapter(OpenAIChatAdapter):
    """OpenAI chunks with Azure's filter results: a prompt or choice marked ``filtered: true``
    ends in :class:`~rakka_trio.ContentFiltered` whose reason names the categories."""

    def _inspect(self, chunk: Mapping[str, Any]) -> None:
        for entry in chunk.get("prompt_filter_results") or ():
            categories = filtered_categories(as_map(entry).get("content_filter_results"))
            if categories:
                self._filter(",".join(categories), "prompt stopped by the content filter")
        for choice in chunk.get("choices") or ():
            categories = filtered_categories(as_map(choice).get("content_filter_results"))
            if categories:
                self._filter(",".join(categories), "output stopped by the content filter")

    def filter_reason(self, choice: Mapping[str, Any]) -> str:
        """The filtered categories of the choice, else ``content_filter``."""
        categories = filtered_categories(choice.get("content_filter_results"))
        return ",".join(categories) if categories else "content_filter"


class AzureOpenAIProvider(OpenAIChatProvider):
    """Azure OpenAI (see the module doc): deployment URLs, ``api-version``, ``api-key``."""

    errors = AZURE_ERRORS
    option_names = frozenset({"deployment", "api_version", "auth"})

    def check_options(self, options: Mapping[str, str]) -> list[tuple[str, str]]:
        """Known keys only; ``auth`` is ``api-key`` or ``bearer``."""
        problems = super().check_options(options)
        auth = options.get("auth")
        if isinstance(auth, str) and auth and auth not in _AUTH_MODES:
            problems.append(("auth", f"must be one of {', '.join(_AUTH_MODES)}; got {auth!r}"))
        return problems

    def build_request(
        self, request: ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> HttpCall:
        """``POST {base}/openai/deployments/{deployment}/chat/completions?api-version=...``.

        ``base_url`` is the resource URL (``https://NAME.openai.azure.com``; a trailing
        ``/openai`` is accepted too).
        """
        root = base_url.rstrip("/")
        if root.endswith("/openai"):
            root = root[: -len("/openai")]
        deployment = quote(options.get("deployment") or model, safe="")
        return HttpCall(
            url=f"{root}/openai/deployments/{deployment}/chat/completions",
            json=chat_body(request, model),
            params={"api-version": options.get("api_version") or DEFAULT_API_VERSION},
        )

    def auth_headers(self, secret: Secret | None, *, options: Mapping[str, str]) -> dict[str, str]:
        """``api-key: <key>``, or ``Authorization: Bearer <token>`` with ``auth = "bearer"``."""
        if secret is None:
            return {}
        if options.get("auth") == "bearer":
            return {"authorization": f"Bearer {secret.get_secret_value()}"}
        return {"api-key": secret.get_secret_value()}

    def stream_adapter(self, *, endpoint: str | None = None) -> AzureChatAdapter:
        """A strict chat adapter that reads Azure's filter results."""
        return AzureChatAdapter(provider=self.name, endpoint=endpoint, errors=self.errors)
