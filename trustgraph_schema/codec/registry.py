"""The codec's caches, one of each: plans, generated functions, their source, and the lock.

Every module of the codec fills and reads these same objects.  The dicts
are only ever mutated, never rebound, so a module that imports one by name
(``encode`` and ``decode`` read ``_ENTRIES`` and ``_DECODERS`` as their own
globals) sees every entry.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .analysis import _Class

_PLANS: dict[type[Any], _Class] = {}
_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {}  # object -> JSON-ready tree
_ENTRIES: dict[type[Any], Callable[[Any], bytes]] = {}  # object -> bytes
_DECODERS: dict[type[Any], Callable[[Any], Any]] = {}
_PRECISE: dict[type[Any], Callable[[Any], Any]] = {}
_SOURCES: dict[type[Any], str] = {}
_LOCK = threading.RLock()
_IDS = itertools.count(1)
