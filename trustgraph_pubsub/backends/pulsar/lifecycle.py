"""Queue lifecycle on Pulsar: creating, checking and deleting topics and durable
subscriptions, through the admin REST API when there is one and by subscribing
otherwise (see "Queue lifecycle" in the package docstring)."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from ... import naming
from ...errors import (
    AuthenticationError,
    BrokerConnectionError,
    ClosedError,
    PubSubError,
    UnsupportedError,
)
from ...tls import certificate_failure
from ...tls_probe import TlsRefusal
from .config import _qos, _redact
from .connection import _held_here

if TYPE_CHECKING:
    from . import PulsarBackend

log = logging.getLogger(__name__)


class PulsarQueues:
    """The queue lifecycle of one ``PulsarBackend``, which delegates its
    ``create_queue``, ``ensure_queue``, ``queue_exists`` and ``delete_queue`` here."""

    def __init__(self, backend: PulsarBackend, api_key: str | None) -> None:
        self._backend = backend
        self.__api_key = api_key

    async def _admin(self, method: str, path: str, what: str) -> tuple[int, bytes]:
        """One admin REST call in a worker thread: ``(status, body)``; transport errors raised."""
        admin_url = self._backend.admin_url
        assert admin_url is not None
        url = f"{admin_url}/admin/v2/{path}"
        headers = {"Accept": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        request = urllib.request.Request(url, method=method, headers=headers)
        timeout = self._backend.operation_timeout

        def call() -> tuple[int, bytes]:
            # https: the same authorities, client certificate and name check as the broker
            context = self._backend._ssl_context() if url.startswith("https://") else None
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                    return int(resp.status), bytes(resp.read())
            except urllib.error.HTTPError as exc:
                return int(exc.code), bytes(exc.read() or b"")

        try:
            status, payload = await asyncio.to_thread(call)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # HTTPException: something answered, but not HTTP (a wrong port, a
            # proxy that cut the connection, a truncated body).
            reason = getattr(exc, "reason", None) or repr(exc)
            bad_cert = certificate_failure(exc)
            if bad_cert:
                reason = TlsRefusal("server", bad_cert).explain("pulsar", "--pulsar-admin-url")
            raise BrokerConnectionError(
                f"could not reach the Pulsar admin API at {_redact(admin_url)} to {what} "
                f"({reason}): is --pulsar-admin-url right?"
            ) from exc
        if status in (401, 403):
            raise AuthenticationError(
                f"the Pulsar admin API at {_redact(admin_url)} refused to {what} "
                f"(HTTP {status}): check --pulsar-api-key and its admin permissions"
            )
        return status, payload

    def _admin_failed(self, what: str, status: int, payload: bytes) -> PubSubError:
        text = payload.decode("utf-8", "replace")[:300]
        admin_url = self._backend.admin_url
        return PubSubError(
            f"the Pulsar admin API at {_redact(admin_url)} could not {what}: HTTP {status} {text}"
        )

    async def _subscribe_once(self, topic: str, subscription: str, unsubscribe: bool) -> None:
        """Make (and keep, or delete) a durable subscription through the binary protocol."""
        c = await self._backend.create_consumer(
            topic, subscription, None, "latest", "shared", prefetch=1
        )
        if unsubscribe:
            await c.unsubscribe()
        else:
            await c.close()

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the topic and its durable subscription (from the latest message).

        Idempotent: an existing topic or subscription is left as it is.  Without
        an admin URL the subscription is made by subscribing and closing.
        """
        path = naming.pulsar_admin_path(topic)
        sub_path = naming.pulsar_admin_path(topic, subscription)
        if self._backend._closed:
            raise ClosedError("Pulsar backend is closed; create a new one with get_pubsub()")
        if self._backend.admin_url is None:
            if _qos(topic) != "q0" and not _held_here(self._backend.host, topic, subscription):
                await self._subscribe_once(topic, subscription, unsubscribe=False)
            return
        what = f"create topic {topic}"
        status, payload = await self._admin("PUT", path, what)
        if status not in (200, 204, 409):
            raise self._admin_failed(what, status, payload)
        if _qos(topic) == "q0":
            return  # a non-persistent subscription lives only while a consumer is attached
        what = f"create subscription {subscription!r} on {topic}"
        status, payload = await self._admin("PUT", sub_path, what)
        if status not in (200, 204, 409):
            raise self._admin_failed(what, status, payload)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        """Create the queue if it is missing; idempotent (``create_queue`` already is)."""
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        """Whether the subscription exists on the topic; needs the admin API.

        Without ``admin_url`` this raises ``UnsupportedError``: Pulsar's binary
        protocol cannot tell, and guessing would claim a queue that may not exist.
        """
        path = naming.pulsar_admin_path(topic)
        naming.check_subscription(subscription, topic)
        if self._backend.admin_url is None:
            raise UnsupportedError(
                f"cannot tell whether subscription {subscription!r} on {topic} exists without "
                "the Pulsar admin API: set --pulsar-admin-url (Capabilities.queue_lifecycle is False)"
            )
        what = f"list the subscriptions of {topic}"
        status, payload = await self._admin("GET", f"{path}/subscriptions", what)
        if status == 404:
            return False
        if status != 200:
            raise self._admin_failed(what, status, payload)
        try:
            subs = json.loads(payload)
        except ValueError as exc:
            raise self._admin_failed(what, status, payload) from exc
        return subscription in subs

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete the subscription and its backlog, or with ``subscription=None`` the
        topic and every subscription on it.  Missing ones are not an error.

        Without an admin URL a subscription is deleted by subscribing and
        unsubscribing; a whole topic cannot be (its subscriptions cannot be
        listed), so that call does nothing.
        """
        path = naming.pulsar_admin_path(topic, subscription)
        if self._backend._closed:
            raise ClosedError("Pulsar backend is closed; create a new one with get_pubsub()")
        if self._backend.admin_url is None:
            if subscription is None:
                log.debug("delete_queue(%s): no admin URL, topic deletion skipped", topic)
            elif _qos(topic) != "q0":
                await self._subscribe_once(topic, subscription, unsubscribe=True)
            return
        what = f"delete {'topic ' + topic if subscription is None else repr(subscription) + ' on ' + topic}"
        status, payload = await self._admin("DELETE", f"{path}?force=true", what)
        if status not in (200, 204, 404):
            raise self._admin_failed(what, status, payload)
