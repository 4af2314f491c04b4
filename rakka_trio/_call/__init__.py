"""One call to a provider: sessions (HTTP clients, credentials, timeouts), the Trio SSE reader,
and the endpoint pipeline (breaker, limiter, retries, stream adapter, metrics) around them.
"""

from ._endpoint import ChunkStream, Endpoint
from ._session import Session, SessionStatistics

__all__ = ["ChunkStream", "Endpoint", "Session", "SessionStatistics"]
