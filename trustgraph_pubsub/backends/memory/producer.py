"""``MemoryProducer``: sends go straight into the hub's topic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trustgraph_schema.topic import Topic

from ...backend import check_properties, encode_payload
from ...errors import ClosedError, MessageTooLargeError
from .config import _Pacer
from .hub import _Entry

if TYPE_CHECKING:
    from . import MemoryBackend


class MemoryProducer:
    """Sends go straight into the hub, so ``flush`` has nothing to wait for."""

    def __init__(self, backend: MemoryBackend, topic: str, parsed: Topic, schema: type[Any] | None) -> None:
        self.topic = topic
        self._parsed = parsed
        self._schema = schema
        self._backend = backend
        self._hub = backend.hub
        self._error: Exception | None = None
        self._pacer = _Pacer()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        self._check()
        self._put(encode_payload(self._schema, message, self.topic), properties, key)
        await self._pacer.tick()

    def send_nowait(
        self, data: bytes, properties: Mapping[str, str] | None = None, key: str | None = None
    ) -> bool:
        """``send`` of encoded ``data`` as a plain call (``NowaitProducer``);
        False when the producer is closed or a yield to the loop is due."""
        if self._error is not None or not self._pacer.skip():
            return False
        self._put(data, properties, key)
        return True

    def _put(self, data: bytes, properties: Mapping[str, str] | None, key: str | None) -> None:
        props = check_properties(properties, self.topic)
        limit = self._hub.max_message_size
        if len(data) > limit:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes on {self.topic} exceeds the memory backend's "
                f"limit of {limit} bytes; send a reference to the data instead, or split it"
            )
        # Kept (retained log, queues) as an exact-size copy: the codec's encoder
        # (orjson) hands back bytes whose allocation is kilobytes larger than
        # their length, ten times a 1 KiB message, and a hub that retains
        # 100,000 messages per topic would hold gigabytes of slack.
        self._hub._publish(self._parsed, _Entry(bytes(memoryview(data)), props, key))

    async def flush(self) -> None:
        self._check()

    async def close(self) -> None:
        if self._error is None:
            self._drop(ClosedError(f"producer for {self.topic} is closed"))

    def _drop(self, error: Exception) -> None:
        self._error = error
        self._hub._producers.discard(self)
        self._backend._producers.discard(self)

    def __repr__(self) -> str:
        return f"<MemoryProducer topic={self.topic!r}>"
