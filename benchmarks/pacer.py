"""The sending half of the paced latency workload, in a process of its own.

    python -m benchmarks.pacer '<json spec>'

Loads the contender named in the spec and calls its ``send_paced``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from benchmarks.contenders import load


async def run(spec: dict[str, Any]) -> None:
    contender = load(spec["contender"], spec["broker"], spec["config"])
    try:
        await contender.send_paced(spec["topic"], spec["rate"], spec["seconds"])
    finally:
        await contender.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(json.loads(sys.argv[1])))
