"""``PulsarTopology``: the Pulsar tenant and namespaces, through the admin REST API."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any, ClassVar

from trustgraph_pubsub.redact import redact_url

from ..initialiser import InitContext, Initialiser, InitialiserError

__all__ = ["PulsarTopology"]

DEFAULT_NAMESPACES = ("flow", "config")


class PulsarTopology(Initialiser):
    """Create a Pulsar tenant and its namespaces (idempotent: existing ones are kept).

    Pulsar refuses topics in a tenant or namespace that does not exist, so this
    runs before the gate, while the services may still be down.  The HTTP calls
    run in a thread (``urllib`` blocks), each bounded by ``timeout``.

    params: ``admin_url`` (default the ``--pulsar-admin-url`` the bootstrapper
    runs with, or env ``PULSAR_ADMIN_URL``), ``tenant`` (default ``tg``),
    ``namespaces`` (default ``[flow, config]``), ``cluster`` (default the first
    the admin API lists), ``timeout`` (seconds, default 10).  A token in
    ``--pulsar-api-key`` is sent as a bearer token.
    """

    wait_for_services: ClassVar[bool] = False

    def __init__(self, admin_url: Any = None, tenant: str = "tg", namespaces: Any = None,
                 cluster: Any = None, timeout: float = 10.0) -> None:
        if admin_url is not None and not (isinstance(admin_url, str) and admin_url.startswith(("http://", "https://"))):
            raise TypeError("param 'admin_url' must be an http(s) URL")
        names = list(namespaces) if namespaces is not None else list(DEFAULT_NAMESPACES)
        if not isinstance(tenant, str) or not tenant or not all(isinstance(n, str) and n for n in names):
            raise TypeError("params 'tenant' and 'namespaces' must be names")
        self.admin_url = admin_url
        self.tenant = tenant
        self.namespaces = names
        self.cluster = cluster
        self.timeout = float(timeout)

    def _url(self, ctx: InitContext) -> str:
        url = self.admin_url or ctx.settings.get("pulsar_admin_url") or os.environ.get("PULSAR_ADMIN_URL")
        if not url:
            raise InitialiserError(
                "no Pulsar admin URL: set params.admin_url, --pulsar-admin-url or PULSAR_ADMIN_URL"
            )
        return str(url).rstrip("/")

    def _call(self, method: str, url: str, body: Any, token: str | None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def _request(self, ctx: InitContext, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        base = self._url(ctx)
        token = ctx.settings.get("pulsar_api_key") or os.environ.get("PULSAR_API_KEY")
        try:
            return await asyncio.to_thread(self._call, method, f"{base}{path}", body, token)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InitialiserError(
                f"the Pulsar admin API at {redact_url(base)} does not answer ({reason}); "
                "is --pulsar-admin-url right and the broker up?"
            ) from None

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        cluster = self.cluster
        if cluster is None:
            status, body = await self._request(ctx, "GET", "/admin/v2/clusters")
            if status != 200:
                raise InitialiserError(f"listing clusters: HTTP {status} {body[:200]!r}")
            clusters = json.loads(body or b"[]")
            if not clusters:
                raise InitialiserError("the Pulsar admin API lists no cluster")
            cluster = clusters[0]
        status, body = await self._request(
            ctx, "PUT", f"/admin/v2/tenants/{self.tenant}",
            {"adminRoles": [], "allowedClusters": [cluster]},
        )
        if status not in (200, 204, 409):
            raise InitialiserError(f"creating tenant {self.tenant!r}: HTTP {status} {body[:200]!r}")
        for ns in self.namespaces:
            status, body = await self._request(ctx, "PUT", f"/admin/v2/namespaces/{self.tenant}/{ns}")
            if status not in (200, 204, 409):
                raise InitialiserError(f"creating namespace {self.tenant}/{ns}: HTTP {status} {body[:200]!r}")
        ctx.log.info("tenant %s and namespaces %s ready on cluster %s", self.tenant,
                     ", ".join(self.namespaces), cluster)
