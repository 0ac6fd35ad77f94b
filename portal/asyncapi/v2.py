"""AsyncAPI 2.0–2.6 channels and operations, turned to the consumer's point of view.

2.6.0 §Channel Item Object: ``subscribe`` "defines the messages produced by the application and
sent to the channel" — the consumer *receives* them; ``publish`` "defines the messages consumed
by the application from the channel" — the consumer *sends* them.
"""

from __future__ import annotations

from typing import Any

from portal.asyncapi.locations import pointer_join
from portal.asyncapi.objects import (
    MessageBudget,
    apply_traits,
    as_text,
    build_channel,
    build_message,
    check_length,
    read_bindings,
    require_mapping,
    summary_of,
)
from portal.asyncapi.parsed import MAX_OPERATION_KEY, Action, ParsedChannel, ParsedOperation
from portal.asyncapi.refs import Resolver

# AsyncAPI 2.x Channel Item field → the consumer's action.
_V2_ACTIONS: tuple[tuple[str, Action], ...] = (("subscribe", "receive"), ("publish", "send"))


def read_channels(data: dict[str, Any], resolver: Resolver) -> list[ParsedChannel]:
    """2.x §Channels Object: the key is the channel's address (a relative path with {params})."""
    channels = []
    budget = MessageBudget()
    for key, raw in (data.get("channels") or {}).items():
        at = pointer_join("/channels", key)
        item = require_mapping(resolver, raw, at, "a Channel Item Object")
        operations = []
        for field_name, action in _V2_ACTIONS:
            if field_name in item:
                op_at = pointer_join(at, field_name)
                operation = require_mapping(resolver, item[field_name], op_at, "an Operation Object")
                operations.append(_operation(operation, action, data, resolver, op_at, budget))
        channels.append(
            build_channel(key, key, {"description": item.get("description")}, item, operations, resolver, at)
        )
    return channels


def _operation(
    operation: dict[str, Any],
    action: Action,
    data: dict[str, Any],
    resolver: Resolver,
    at: str,
    budget: MessageBudget,
) -> ParsedOperation:
    """2.x §Operation Object; its traits are JSON-Merge-Patched over it in order (trait wins)."""
    operation = apply_traits(operation, resolver, at, object_wins=False)
    key = as_text(operation.get("operationId"))
    check_length(key, MAX_OPERATION_KEY, pointer_join(at, "operationId"), "the operationId")
    summary = summary_of(operation)
    resolver.charge(len(key) + len(summary) + 64, at=at)
    messages = []
    if "message" in operation:
        message_at = pointer_join(at, "message")
        message = require_mapping(resolver, operation["message"], message_at, "a Message Object")
        # 2.x §Operation Object: "message" is one Message Object or {"oneOf": [...]}.
        if isinstance(message.get("oneOf"), list):
            candidates = [
                (item, pointer_join(pointer_join(message_at, "oneOf"), index))
                for index, item in enumerate(message["oneOf"])
            ]
        else:
            candidates = [(operation["message"], message_at)]
        budget.spend(
            len(candidates), at=message_at, what=f"the operation at {at} carries {len(candidates):,} messages"
        )
        for index, (candidate, candidate_at) in enumerate(candidates):
            fallback = f"message{index + 1}" if len(candidates) > 1 else "message"
            messages.append(
                build_message(candidate, data, resolver, candidate_at, fallback=fallback, object_wins=False)
            )
    bindings = read_bindings(operation, resolver, at, "an Operation Bindings Object")
    return ParsedOperation(key=key, action=action, summary=summary, messages=messages, bindings=bindings)
