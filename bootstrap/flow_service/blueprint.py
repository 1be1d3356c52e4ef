"""Flow blueprints: validation, parameter resolution and instantiation.

A blueprint (config type ``flow-blueprint``) is JSON::

    {
      "description": "...",
      "parameters": {"chunk-size": {"type": "chunk-size", "description": "...",
                                    "order": 1, "advanced": false,
                                    "controlled-by": "other-param", "default": "1000"}},
      "interfaces": {"chunk": {"request": "q1/tg/flow/chunk-req.{workspace}.{id}",
                               "response": "q1/tg/flow/chunk-resp.{workspace}.{id}"}},
      "flow": {"chunker:{id}": {"topics": {"request": "q1/tg/flow/chunk-req.{workspace}.{id}",
                                           "response": "q1/tg/flow/chunk-resp.{workspace}.{id}"},
                                "parameters": {"chunk-size": "{chunk-size}"},
                                "consumes": ["request"]}}
    }

Each ``flow`` entry is ``"<processor>:<variant>"``; starting a flow writes one
config entry per entry, type ``processor:<processor>``, key ``<variant>``
after substitution (usually the flow id; ``{blueprint}`` makes one entry
shared by every flow of the blueprint).  ``{workspace}``, ``{id}``,
``{blueprint}`` and ``{<parameter>}`` are substituted in variants, topics,
interfaces and parameter values; any other placeholder is refused.  Topics
are generic names (``qos/tenant/namespace/queue``) and must be valid after
substitution.

Queues.  A processor consumes the topics its entry lists under
``"consumes"``; when the entry has no such list, the topics named
``input`` and ``request`` (TrustGraph's consumer spec names).  The flow owns
one queue per consumed topic, subscription ``<processor>`` (the processor's
consumers all share it, so its replicas split the work).  Topics a processor
only produces to get no queue: a queue nobody reads would only fill up.

Parameters resolve as: the value given to ``start-flow``; else the value of
the parameter named by ``controlled-by``; else the default of the parameter
type (config ``parameter-type/<type>``: ``{"type", "default", "enum", "min",
"max", "required"}``); else the blueprint parameter's own ``default``.  A
required parameter with no value fails, and so does a value outside the
type's ``enum``/``min``/``max`` or not of its ``type`` (``integer``,
``number``, ``boolean``, ``string``).  A parameter the blueprint does not
declare is refused, so a typo is not silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from trustgraph_schema import TopicError, parse_topic

__all__ = ["BlueprintError", "FlowPlan", "check_name", "instantiate", "validate_blueprint"]

NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
BUILTINS = ("workspace", "id", "blueprint")
DEFAULT_CONSUMES = ("input", "request")


class BlueprintError(ValueError):
    """A blueprint, or a flow made from it, is not valid; the message says where."""


def check_name(value: Any, what: str) -> str:
    """A name that goes into topics and config keys: ``[A-Za-z0-9_.-]+``."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise BlueprintError(f"{what} {value!r} must be non-empty and use only [A-Za-z0-9_.-]")
    return value


def substitute(template: str, variables: dict[str, str], where: str) -> str:
    """Replace ``{name}`` placeholders; an unknown one is an error naming ``where``."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            raise BlueprintError(
                f"{where}: unknown placeholder {{{name}}} (known: "
                f"{', '.join('{' + v + '}' for v in sorted(variables))})"
            )
        return variables[name]

    return _PLACEHOLDER.sub(one, template)


def _substitute_tree(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        return substitute(value, variables, where)
    if isinstance(value, list):
        return [_substitute_tree(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute_tree(v, variables, f"{where}.{k}") for k, v in value.items()}
    return value


def _consumes(entry: dict[str, Any], topics: dict[str, Any], where: str) -> list[str]:
    consumes = entry.get("consumes")
    if consumes is None:
        return [name for name in DEFAULT_CONSUMES if name in topics]
    if not isinstance(consumes, list) or not all(isinstance(c, str) for c in consumes):
        raise BlueprintError(f"{where}.consumes must be a list of topic names")
    for c in consumes:
        if c not in topics:
            raise BlueprintError(f"{where}.consumes names {c!r}, which is not one of its topics")
    return list(consumes)


def validate_blueprint(definition: Any) -> dict[str, Any]:
    """Check a blueprint's shape and its templates (substituted with trial values)."""
    if not isinstance(definition, dict):
        raise BlueprintError("a blueprint must be a JSON object")
    params = definition.get("parameters", {})
    if not isinstance(params, dict):
        raise BlueprintError("parameters must be an object of name -> definition")
    for name, spec in params.items():
        check_name(name, "parameter name")
        if name in BUILTINS:
            raise BlueprintError(f"parameter {name!r} clashes with the built-in {{{name}}}")
        if not isinstance(spec, dict):
            raise BlueprintError(f"parameters.{name} must be an object")
        cb = spec.get("controlled-by")
        if cb is not None and (cb not in params or cb == name):
            raise BlueprintError(f"parameters.{name}.controlled-by names no other parameter: {cb!r}")
    flow = definition.get("flow")
    if not isinstance(flow, dict) or not flow:
        raise BlueprintError("flow must be a non-empty object of '<processor>:<variant>' entries")
    for section in ("interfaces",):
        if not isinstance(definition.get(section, {}), dict):
            raise BlueprintError(f"{section} must be an object")
    trial = {name: "x" for name in (*BUILTINS, *params)}
    for key, entry in flow.items():
        processor, sep, variant = key.partition(":") if isinstance(key, str) else ("", "", "")
        if not sep or not variant:
            raise BlueprintError(f"flow entry {key!r} must be '<processor>:<variant>'")
        check_name(processor, f"flow entry {key!r}: processor")
        check_name(substitute(variant, trial, f"flow.{key}"), f"flow entry {key!r}: variant")
        if not isinstance(entry, dict):
            raise BlueprintError(f"flow.{key} must be an object")
        topics = entry.get("topics", {})
        if not isinstance(topics, dict):
            raise BlueprintError(f"flow.{key}.topics must be an object of name -> topic")
        for spec, template in topics.items():
            where = f"flow.{key}.topics.{spec}"
            if not isinstance(template, str):
                raise BlueprintError(f"{where} must be a topic name")
            try:
                parse_topic(substitute(template, trial, where))
            except TopicError as exc:
                raise BlueprintError(f"{where}: {exc}") from None
        _consumes(entry, topics, f"flow.{key}")
        eparams = entry.get("parameters", {})
        if not isinstance(eparams, dict) or not all(isinstance(v, str) for v in eparams.values()):
            raise BlueprintError(f"flow.{key}.parameters must be an object of name -> text")
        _substitute_tree(eparams, trial, f"flow.{key}.parameters")
    _substitute_tree(definition.get("interfaces", {}), trial, "interfaces")
    return definition


def _check_value(name: str, value: str, ptype: dict[str, Any]) -> None:
    kind = ptype.get("type", "string")
    try:
        if kind == "integer":
            number: float = int(value)
        elif kind == "number":
            number = float(value)
        elif kind == "boolean":
            if value not in ("true", "false"):
                raise ValueError(value)
            number = 0
        else:
            number = 0
    except ValueError:
        raise BlueprintError(f"parameter {name!r}: {value!r} is not a {kind}") from None
    enum = ptype.get("enum")
    if isinstance(enum, list) and enum and value not in [str(e) for e in enum]:
        raise BlueprintError(f"parameter {name!r}: {value!r} is not one of {enum}")
    if kind in ("integer", "number"):
        lo, hi = ptype.get("min"), ptype.get("max")
        if isinstance(lo, (int, float)) and number < lo:
            raise BlueprintError(f"parameter {name!r}: {value} is below the minimum {lo}")
        if isinstance(hi, (int, float)) and number > hi:
            raise BlueprintError(f"parameter {name!r}: {value} is above the maximum {hi}")


def resolve_parameters(
    blueprint: dict[str, Any], given: dict[str, str], parameter_types: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Every declared parameter's value (see the module docstring for the order)."""
    declared: dict[str, Any] = blueprint.get("parameters", {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise BlueprintError(
            f"the blueprint has no parameter {unknown[0]!r} (it has: {', '.join(sorted(declared)) or 'none'})"
        )
    out: dict[str, str] = {}
    # Parameters without controlled-by first, so the others can copy them.
    for name in sorted(declared, key=lambda n: declared[n].get("controlled-by") is not None):
        spec = declared[name]
        ptype = parameter_types.get(str(spec.get("type", "")), {})
        value: Any = given.get(name)
        if value is None and spec.get("controlled-by") is not None:
            value = out.get(spec["controlled-by"])
        if value is None:
            value = ptype.get("default", spec.get("default"))
        if value is None:
            if ptype.get("required") or spec.get("required"):
                raise BlueprintError(f"parameter {name!r} is required and has no default")
            continue
        text = value if isinstance(value, str) else (
            "true" if value is True else "false" if value is False else str(value)
        )
        _check_value(name, text, ptype)
        out[name] = text
    return out


@dataclass
class FlowPlan:
    """What starting one flow writes and creates."""

    #: (processor, variant) -> the processor entry's value
    processors: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: (topic, subscription) of every queue the flow consumes from
    queues: set[tuple[str, str]] = field(default_factory=set)
    #: every topic the flow names
    topics: set[str] = field(default_factory=set)
    interfaces: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)


def instantiate(
    blueprint: dict[str, Any],
    *,
    workspace: str,
    flow_id: str,
    blueprint_name: str,
    parameters: dict[str, str],
) -> FlowPlan:
    """Substitute a validated blueprint for one flow."""
    variables = {"workspace": workspace, "id": flow_id, "blueprint": blueprint_name, **parameters}
    # Parameters not given and without a default are substituted as "".
    for name in blueprint.get("parameters", {}):
        variables.setdefault(name, "")
    plan = FlowPlan(parameters=dict(parameters))
    for key, entry in blueprint["flow"].items():
        processor, _, variant_t = key.partition(":")
        variant = check_name(substitute(variant_t, variables, f"flow.{key}"), f"flow {key!r} variant")
        topics: dict[str, str] = {}
        for spec, template in entry.get("topics", {}).items():
            where = f"flow.{key}.topics.{spec}"
            name = substitute(template, variables, where)
            try:
                parse_topic(name)
            except TopicError as exc:
                raise BlueprintError(f"{where}: {exc}") from None
            topics[spec] = name
            plan.topics.add(name)
        for spec in _consumes(entry, entry.get("topics", {}), f"flow.{key}"):
            plan.queues.add((topics[spec], processor))
        plan.processors[(processor, variant)] = {
            "topics": topics,
            "parameters": _substitute_tree(
                entry.get("parameters", {}), variables, f"flow.{key}.parameters"
            ),
        }
    plan.interfaces = _substitute_tree(blueprint.get("interfaces", {}), variables, "interfaces")
    for value in _strings(plan.interfaces):
        if "/" in value:
            try:
                plan.topics.add(str(parse_topic(value)))
            except TopicError as exc:
                raise BlueprintError(f"interfaces: {exc}") from None
    return plan


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []
