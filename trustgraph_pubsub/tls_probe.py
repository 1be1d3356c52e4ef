"""Why a TLS connect failed, found by one handshake of our own.

Some broker clients swallow the reason a TLS connection failed: the Pulsar
C++ client reports ``ConnectError`` or ``Timeout`` and logs the rest, and
aiokafka's bootstrap raises "unable to bootstrap" without a cause.  When
their connect fails, a backend calls ``tls_refusal`` with the client's own
``SSLContext``: one handshake with the broker says whether the broker's
certificate failed verification, or the broker refused ours (with TLS 1.3 a
server that wants a client certificate says so just after the handshake, in
an alert, or just closes the connection), so the error can say which flag to
look at.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from .tls import certificate_failure

__all__ = ["TlsRefusal", "tls_refusal"]

#: OpenSSL alert reasons a server sends when it does not accept the client's certificate
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                       "CERTIFICATE_UNKNOWN", "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_EXPIRED")


@dataclass(frozen=True)
class TlsRefusal:
    """A handshake that failed on a certificate: ``side`` "server" (the broker's did
    not verify here) or "client" (the broker refused ours, or its absence)."""

    side: str
    reason: str

    def explain(self, prefix: str, host_flag: str) -> str:
        """What failed and which ``--<prefix>-tls-*`` flags to check (no secrets in it)."""
        if self.side == "server":
            return (
                f"the broker's certificate failed verification ({self.reason}); does "
                f"--{prefix}-tls-ca-file hold the authority that signed it (default: the "
                f"system's), and does it name the host in {host_flag} (else "
                f"--{prefix}-tls-verify-hostname false)?"
            )
        return (
            f"the broker did not accept the client certificate, or its absence ({self.reason}); "
            f"give one it trusts with --{prefix}-tls-cert-file and --{prefix}-tls-key-file"
        )


async def tls_refusal(host: str, port: int, context: ssl.SSLContext,
                      timeout: float = 3.0) -> TlsRefusal | None:  # noqa: ASYNC109
    """One handshake with ``host:port``: the certificate failure, if that is what fails."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except Exception as exc:
        reason = certificate_failure(exc)
        if reason:
            return TlsRefusal("server", reason)
        return _client_refused(exc)
    try:
        # A broker says nothing unprompted and waits for a request: silence means
        # the handshake stood; an alert, or the connection closed at once, that the
        # broker did not accept our certificate (or the lack of one).
        async with asyncio.timeout(min(timeout, 1.0)):
            first = await reader.read(1)
        if first == b"":
            return TlsRefusal("client", "it closed the connection just after the handshake")
    except (ssl.SSLError, ConnectionError) as exc:
        return _client_refused(exc) or TlsRefusal("client", _reason(exc))
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()
    return None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else type(exc).__name__


def _client_refused(exc: BaseException) -> TlsRefusal | None:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason and any(a in reason for a in _CLIENT_CERT_ALERTS):
        return TlsRefusal("client", f"alert: {_reason(exc)}")
    return None
