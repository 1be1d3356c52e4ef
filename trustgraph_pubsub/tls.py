"""TLS settings for every backend, in one place.

Each backend that speaks TLS (RabbitMQ amqps, MQTT over TLS, Kafka SSL,
Pulsar ``pulsar+ssl``) takes the same options -- ``tls_ca_file``,
``tls_cert_file``, ``tls_key_file``, ``tls_verify_hostname`` -- and must
check them the same way: a missing or unloadable file is a
``ConfigurationError`` naming the flag at fault and the path, a client
certificate needs its key and the other way round, and nothing older than
TLS 1.2 is spoken.  ``client_context`` does that once, so the backends do
not each grow their own slightly different copy; ``certificate_failure``
finds a certificate verification failure in whatever a broker client
raised, so every backend's connect error says *why* the server was refused.
"""

from __future__ import annotations

import os
import ssl

from .errors import ConfigurationError

__all__ = ["certificate_failure", "client_context", "tls_flag"]


def tls_flag(flag_prefix: str, name: str) -> str:
    """``--<prefix>-tls-<name>``: the flag a message names (``name`` as in ``ca-file``)."""
    return f"--{flag_prefix}-tls-{name}"


def _reason(exc: BaseException) -> str:
    """OpenSSL's words for ``exc`` without the ``[SSL: ...] ... (_ssl.c:NNN)`` clutter."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _check_readable(path: str, flag: str, what: str) -> None:
    if not os.path.isfile(path):
        raise ConfigurationError(f"{flag}: {what} file {path!r} does not exist (or is not a file)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(f"{flag}: cannot read {what} file {path!r}: {_reason(exc)}") from exc


def _has_certificate(path: str) -> bool:
    """Whether ``path`` holds at least one PEM certificate that decodes."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return False
    try:
        ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)])
    except ValueError:
        return False
    return True


def client_context(ca_file: str | None, cert_file: str | None, key_file: str | None,
                   verify_hostname: bool, flag_prefix: str) -> ssl.SSLContext:
    """A client ``SSLContext``: trust ``ca_file`` (or the system's authorities
    when None), present ``cert_file``/``key_file`` when given (mutual TLS),
    check the server's name when ``verify_hostname``, TLS 1.2 at least.

    The server's certificate is always verified; ``verify_hostname=False``
    only skips matching its name.  Raises ``ConfigurationError`` naming the
    ``--<flag_prefix>-tls-...`` flag and the path of a file that is missing,
    unreadable or not what it should be.
    """
    ca_flag = tls_flag(flag_prefix, "ca-file")
    cert_flag = tls_flag(flag_prefix, "cert-file")
    key_flag = tls_flag(flag_prefix, "key-file")
    ca_file, cert_file, key_file = ca_file or None, cert_file or None, key_file or None
    if (cert_file is None) != (key_file is None):
        given, missing = (cert_flag, key_flag) if cert_file else (key_flag, cert_flag)
        raise ConfigurationError(
            f"{given} needs {missing} too: a client certificate ({cert_flag}) and its "
            f"private key ({key_flag}) go together; give both or neither")
    if ca_file is not None:
        _check_readable(ca_file, ca_flag, "CA")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"{ca_flag}: cannot load {ca_file!r} as PEM CA certificates: {_reason(exc)}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = bool(verify_hostname)
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None and key_file is not None:
        _check_readable(cert_file, cert_flag, "client certificate")
        _check_readable(key_file, key_flag, "client key")
        if not _has_certificate(cert_file):
            raise ConfigurationError(
                f"{cert_flag}: {cert_file!r} holds no PEM certificate")
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"{key_flag}: cannot use {key_file!r} as the private key of the certificate "
                f"in {cert_flag} {cert_file!r}: {_reason(exc)} (not a PEM key, encrypted, "
                f"or not the certificate's key)") from exc
    return context


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc``, its causes and contexts, and exceptions carried in their args."""
    seen: list[BaseException] = []
    todo = [exc] if exc is not None else []
    while todo and len(seen) < 50:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        for arg in e.args:
            if isinstance(arg, BaseException):
                todo.append(arg)
            elif isinstance(arg, (list, tuple)):
                todo.extend(a for a in arg if isinstance(a, BaseException))
    return seen


def certificate_failure(exc: BaseException | None) -> str | None:
    """A short reason when ``exc`` (or anything it chains or wraps) is a failed
    certificate verification, e.g. ``"certificate verify failed: unable to get
    local issuer certificate"``; None when it is not one."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            detail = e.verify_message or _reason(e)
            return f"certificate verify failed: {detail}"
    for e in _chain(exc):  # a client that flattened the error into its text
        text = str(e)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            tail = text.split("certificate verify failed", 1)[-1].strip(" :")
            tail = tail.split("(_ssl.c", 1)[0].strip(" ()")
            return "certificate verify failed" + (f": {tail}" if tail else "")
    return None
