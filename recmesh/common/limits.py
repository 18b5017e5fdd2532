"""What every stage accepts: the one source of the sizes of ids and text fields.

The gateway (public edge), the encoder and retrieval all check against these, so an item or a
query the gateway accepts is never refused further in (with a message about a field the caller
never sent). A service setting may narrow one of them for its own callers - never widen it:
settings are checked against these at start-up (see `at_most`)."""

from __future__ import annotations

# Characters (code points), as counted by len() on the decoded string.
ID_CHARS = 128  # user, item, event and request ids; categories, tags, filter values, context
QUERY_CHARS = 1000  # a typed query (Recommend, SEARCH events)
TITLE_CHARS = 1000
DESCRIPTION_CHARS = 4000
LABELS_PER_ITEM = 64  # categories, and tags, per item
LABEL_CHARS = ID_CHARS  # one category or tag: a filter value names it
# Item attributes (common.proto Item.attributes): names are 1..ATTRIBUTE_NAME_CHARS of [A-Za-z0-9_];
# a text value is at most LABEL_CHARS (an any_of filter value names it).
ATTRIBUTE_NAME_CHARS = 64
ATTRIBUTES_PER_ITEM = 64

# Per call.
EVENTS_PER_CALL = 1000  # TrackEvents / Ingest
ITEMS_PER_CALL = 1024  # UpsertItems / EncodeItems
FILTER_VALUES = 1000  # per filter list of a Recommend (and per attribute filter's any_of); ids per DeleteItems
ATTRIBUTE_FILTERS = 32  # attribute filters in one Recommend (filters.attributes)
# Bytes of items per upsert (UTF-8, as sent): the internal calls carry them again with their
# vectors, within the 16 MiB message limit (recmesh.common.channels.MAX_MESSAGE_BYTES).
UPSERT_BYTES = 8 * 1024 * 1024

# A guest's (or any user's) recent events sent inline with one Recommend (session_events).
SESSION_EVENTS = 100
# Business rules (common.proto Rule, StoredRule): a rule's name is 1..RULE_NAME_CHARS of
# [A-Za-z0-9_.:-]; a match names at most MATCH_ITEM_IDS ids and MATCH_CATEGORIES categories (its
# attribute tests: ATTRIBUTE_FILTERS). Every rule is tested against every candidate of an
# answer (hundreds) on the request path: the counts bound that work.
RULE_NAME_CHARS = 128
RULES_PER_REQUEST = 16  # RecommendRequest.rules
STORED_RULES = 64  # the updater's stored set, all surfaces together
MATCH_ITEM_IDS = 100
MATCH_CATEGORIES = 64
RULE_SURFACES = 32  # StoredRule.surfaces
# A pin's position is below the largest page any gateway serves (its max_k narrows this).
PIN_POSITIONS = 1000
# Values a rule's match names (ids, categories, attribute tests and their any_of values) - in one
# rule, over a request's rules, over the stored set. Each value is checked on arrival (on the
# gateway's event loop) and the stored set is listed by every gateway twice a second: without
# these, requests whose every field is within its own limit stalled the gateway for seconds, and
# a stored set of a few such rules outgrew the 16 MiB message cap (hostile-input review).
MATCH_VALUES = 1000
RULE_VALUES_PER_REQUEST = 1000
STORED_RULE_VALUES = 10_000

# Per user: the items remembered as seen (updater), every one of which a search may exclude.
SEEN_ITEMS = 5000
# Per user: the items remembered as hidden or disliked (never shown again); past it the oldest go.
HIDDEN_ITEMS = 1000
# Ids in one internal request (retrieval): a Recommend's excluded ids, the user's seen and hidden
# items, and the items of its inline session events.
IDS_PER_REQUEST = FILTER_VALUES + SEEN_ITEMS + HIDDEN_ITEMS + SESSION_EVENTS


def at_most(value: int, ceiling: int, constant: str) -> int:
    """For a setting's validator, when the setting narrows a shared limit: ValueError when it
    would widen it (the next stage would refuse what this one let in); load_settings then stops
    the service at start-up with the setting's name."""
    if value > ceiling:
        raise ValueError(f"at most {ceiling}, got {value} (recmesh.common.limits.{constant}: what "
                         "every stage of the mesh accepts; a lower value only narrows this service)")
    return value
