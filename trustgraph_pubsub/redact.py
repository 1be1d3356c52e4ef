"""The one place where secrets are taken out of what is shown.

Addresses and connection strings appear in logs, reprs and error messages;
the credentials inside them must not.  ``redact_url`` drops the
``user:password@`` part of a URL; ``redact_conninfo`` also masks the
``password=...`` of a libpq key/value connection string; ``shown`` is
what an error message may quote of a value a user gave (redacted, and cut
short: a megabyte of junk in an option must not become a megabyte of log).
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["MASK", "redact_conninfo", "redact_url", "shown"]

MASK = "***"
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
#: ``user:password@`` wherever it stands, with or without a scheme before it.
_USERINFO = re.compile(r"(^|[/\s,;])[^/\s,;@]*@")
#: how much of a user's value an error message quotes.
SHOWN_LIMIT = 80


def redact_url(url: str | None) -> str | None:
    """``url`` without any ``user:password@`` part (None and plain hosts pass through)."""
    if not url or "@" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # unparseable ("[host"): cut every userinfo by pattern
        return _USERINFO.sub(r"\1", url)
    if not parts.netloc:
        # No scheme ("user:pw@host:6650") or not a URL at all: still no userinfo.
        return _USERINFO.sub(r"\1", url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def shown(value: object, secret: bool = False) -> str:
    """``repr(value)`` as an error message may quote it: redacted and at most ~80 characters."""
    if secret:
        return "<hidden>"
    text = redact_url(value) if isinstance(value, str) else value
    out = repr(text)
    if len(out) > SHOWN_LIMIT:
        out = f"{out[:SHOWN_LIMIT - 20]}...{out[-10:]} ({len(str(text))} characters)"
    return out


def redact_conninfo(dsn: str | None) -> str | None:
    """A database connection string (URL or ``key=value`` form) with its password masked."""
    if not dsn:
        return dsn
    if "://" in dsn:
        shown = redact_url(dsn) or ""
        return _QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, shown)
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, dsn)
