"""AsyncAPI 3.0–3.1 channels and operations, turned to the consumer's point of view.

3.0.0 §Operation Object, ``action``: "Use ``send`` when it's expected that the application will
send a message to the given channel, and ``receive`` when the application should expect
receiving messages from the given channel" — ``send`` becomes the consumer's *receive*,
``receive`` the consumer's *send*.
"""

from __future__ import annotations

from typing import Any

from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.locations import pointer_join
from portal.asyncapi.objects import (
    MessageBudget,
    apply_traits,
    build_channel,
    build_message,
    check_length,
    internal_tokens,
    optional_field,
    read_bindings,
    require_mapping,
    summary_of,
)
from portal.asyncapi.parsed import MAX_OPERATION_KEY, Action, ParsedChannel, ParsedOperation
from portal.asyncapi.refs import Resolver, describe, is_ref

# AsyncAPI 3.x Operation Object ``action`` (the application's) → the consumer's action.
_V3_ACTIONS: dict[str, Action] = {"send": "receive", "receive": "send"}


def read_channels(data: dict[str, Any], resolver: Resolver) -> list[ParsedChannel]:
    """3.x: channels hold addresses and messages; root ``operations`` point at channels."""
    channel_items = {}
    for key, raw in (data.get("channels") or {}).items():
        at = pointer_join("/channels", key)
        channel_items[key] = require_mapping(resolver, raw, at, "a Channel Object")
    operations: dict[str, list[ParsedOperation]] = {key: [] for key in channel_items}
    budget = MessageBudget()
    for op_key, raw in (data.get("operations") or {}).items():
        at = pointer_join("/operations", op_key)
        raw = require_mapping(resolver, raw, at, "an Operation Object")
        channel_key, operation = _operation(op_key, raw, channel_items, data, resolver, at, budget)
        operations[channel_key].append(operation)
    channels = []
    for key, item in channel_items.items():
        # 3.0 §Channel Object: a null or absent address means it is "unknown or dynamic"; the
        # gateway still needs something to route on, so the channel key stands in for it.
        at = pointer_join("/channels", key)
        address = optional_field(item, "address", str, at, "a string")
        address = key if address is None else address
        channels.append(build_channel(key, address, item, item, operations[key], resolver, at))
    return channels


def _operation(
    key: str,
    operation: dict[str, Any],
    channels: dict[str, dict[str, Any]],
    data: dict[str, Any],
    resolver: Resolver,
    at: str,
    budget: MessageBudget,
) -> tuple[str, ParsedOperation]:
    """3.x §Operation Object → (channel key, operation); traits merge under it (object wins).

    ``channel`` MUST point to a channel in the root channels object; ``messages`` MUST point to
    messages of that channel and, when absent, means all of them. The messages count towards
    ``budget`` before any is read.
    """
    check_length(key, MAX_OPERATION_KEY, at, "the operation key")
    operation = apply_traits(operation, resolver, at, object_wins=True)
    # The schema checks operations written in place; one reached by a $ref may be anything.
    action = operation.get("action")
    if not isinstance(action, str) or action not in _V3_ACTIONS:
        raise AsyncAPIError(
            f'an operation\'s "action" must be "send" or "receive", found {describe(action)}',
            pointer=pointer_join(at, "action"),
        )
    if not is_ref(operation.get("channel")):
        raise AsyncAPIError(
            'an operation needs "channel": {"$ref": "#/channels/<key>"} (AsyncAPI 3.0 §Operation Object)',
            pointer=pointer_join(at, "channel"),
        )
    channel_ref = operation["channel"]["$ref"]
    tokens = internal_tokens(channel_ref)
    if len(tokens) != 2 or tokens[0] != "channels" or tokens[1] not in channels:
        raise AsyncAPIError(
            f'the operation\'s channel "{channel_ref}" must point to a channel under /channels '
            "(AsyncAPI 3.0 §Operation Object)",
            pointer=pointer_join(pointer_join(at, "channel"), "$ref"),
        )
    channel_key = tokens[1]
    summary = summary_of(operation)
    resolver.charge(len(key) + len(summary) + 64, at=at)
    if operation.get("messages") is not None:
        messages_at = pointer_join(at, "messages")
        listed = optional_field(operation, "messages", list, at, "a list of message references")
        budget.spend(len(listed), at=messages_at, what=f'operation "{key}" lists {len(listed):,} messages')
        messages = [
            build_message(item, data, resolver, pointer_join(messages_at, index), object_wins=True)
            for index, item in enumerate(listed)
        ]
    else:
        channel_at = pointer_join("/channels", channel_key)
        channel_messages = optional_field(
            channels[channel_key], "messages", dict, channel_at, "a mapping of messages"
        )
        count = len(channel_messages or {})
        budget.spend(
            count,
            at=at,
            what=f'operation "{key}" lists no "messages", so it carries all {count:,} messages of '
            f'channel "{channel_key}"',
        )
        messages = [
            build_message(
                item,
                data,
                resolver,
                pointer_join(pointer_join(channel_at, "messages"), name),
                key=name,
                object_wins=True,
            )
            for name, item in (channel_messages or {}).items()
        ]
    bindings = read_bindings(operation, resolver, at, "an Operation Bindings Object")
    parsed = ParsedOperation(
        key=key, action=_V3_ACTIONS[action], summary=summary, messages=messages, bindings=bindings
    )
    return channel_key, parsed
