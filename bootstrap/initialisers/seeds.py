"""``TemplateSeed`` and ``WorkspaceInit``: the config a deployment starts with.

Seed files are JSON objects ``{type: {key: value}}``; each value is any JSON
value and is stored as its JSON text (``"abc"`` is stored as ``'"abc"'``, an
object as its serialisation), since config values are JSON text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..initialiser import InitContext, Initialiser, InitialiserError

__all__ = ["TemplateSeed", "WorkspaceInit", "read_seed"]

TEMPLATE = "__template__"
WORKSPACES = "__workspaces__"


def read_seed(path: str | Path) -> dict[str, dict[str, str]]:
    """A seed file as ``{type: {key: json text}}``; ``InitialiserError`` naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InitialiserError(f"seed file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InitialiserError(f"seed file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InitialiserError(f"seed file {path}: expected an object of type -> {{key: value}}")
    return {t: {k: json.dumps(v) for k, v in entries.items()} for t, entries in data.items()}


def _check_file(path: Any, name: str) -> str:
    if not isinstance(path, str) or not path:
        raise TypeError(f"param {name!r} must be a file path")
    if not Path(path).is_file():
        raise TypeError(f"param {name!r}: no such file {path}")
    return path


async def _fill(ctx: InitContext, workspace: str, seed: dict[str, dict[str, str]],
                overwrite: bool) -> int:
    """Put the seed's entries missing from ``workspace`` (all with ``overwrite``) in one write."""
    existing = await ctx.config.get_all(workspace)
    todo = [(t, k, v) for t, entries in sorted(seed.items()) for k, v in sorted(entries.items())
            if overwrite or k not in existing.get(t, {})]
    if todo:
        await ctx.config.put_many(workspace, todo)
    return len(todo)


class TemplateSeed(Initialiser):
    """Seed the ``__template__`` workspace from a JSON file.

    params: ``config_file`` (the seed file), ``overwrite`` (default false:
    a re-run only adds keys that are missing, so edits made since are kept).
    """

    def __init__(self, config_file: Any = None, overwrite: bool = False) -> None:
        self.config_file = _check_file(config_file, "config_file")
        self.overwrite = bool(overwrite)
        read_seed(self.config_file)  # refuse a bad file at start-up

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        n = await _fill(ctx, TEMPLATE, read_seed(self.config_file), self.overwrite)
        ctx.log.info("seeded %d entr%s into %s", n, "y" if n == 1 else "ies", TEMPLATE)


class WorkspaceInit(Initialiser):
    """Fill a workspace from ``__template__`` (every type) or from a seed file.

    params: ``workspace``; ``source``: ``template`` (default) or ``seed-file``;
    ``seed_file`` (with ``source: seed-file``); ``overwrite`` (default false).
    With ``template``, a template that is not seeded yet is an error, so the
    next wake tries again.  The workspace is recorded in ``__workspaces__``.
    """

    def __init__(self, workspace: Any = None, source: str = "template", seed_file: Any = None,
                 overwrite: bool = False) -> None:
        if not isinstance(workspace, str) or not workspace or workspace.startswith("_"):
            raise TypeError("param 'workspace' must be a workspace id not starting with '_'")
        if source not in ("template", "seed-file"):
            raise TypeError(f"param 'source' must be 'template' or 'seed-file', got {source!r}")
        self.workspace = workspace
        self.source = source
        self.seed_file = _check_file(seed_file, "seed_file") if source == "seed-file" else None
        self.overwrite = bool(overwrite)

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        if self.seed_file is not None:
            seed = read_seed(self.seed_file)
        else:
            seed = await ctx.config.get_all(TEMPLATE)
            if not seed:
                raise InitialiserError(f"{TEMPLATE} is empty: not seeded yet")
        n = await _fill(ctx, self.workspace, seed, self.overwrite)
        await ctx.config.put(WORKSPACES, "workspace", self.workspace,
                             json.dumps({"source": self.source}))
        ctx.log.info("workspace %s: %d entr%s from %s", self.workspace, n,
                     "y" if n == 1 else "ies", self.source)
