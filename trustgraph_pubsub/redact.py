"""The one place where secrets are taken out of what is shown.

Addresses and connection strings appear in logs, reprs and error messages;
the credentials inside them must not.  ``redact_url`` drops the
``user:password@`` part of a URL; ``redact_conninfo`` also masks the
``password=...`` of a libpq key/value connection string.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["MASK", "redact_conninfo", "redact_url"]

MASK = "***"
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str | None) -> str | None:
    """``url`` without any ``user:password@`` part (None and plain hosts pass through)."""
    if not url or "@" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def redact_conninfo(dsn: str | None) -> str | None:
    """A database connection string (URL or ``key=value`` form) with its password masked."""
    if not dsn:
        return dsn
    if "://" in dsn:
        shown = redact_url(dsn) or ""
        return _QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, shown)
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, dsn)
