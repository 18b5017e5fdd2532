"""A scripted session that shows one user's recommendations follow their events and words.

The script is drawn from the catalog the var holds (`recmesh.tools.catalog.snapshot`): the two
largest categories stand for two tastes, a few items of each are clicked and viewed, one of the
first category's names is typed, then a filter keeps the second. The bundled MovieLens catalog
gets its familiar films (family animations, then horror)."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from recmesh.client import Event, RecmeshClient
from recmesh.common.paths import var_paths
from recmesh.v1 import common_pb2

FAMILY_FILMS = ["1", "6377", "4306", "4886", "364"]  # Toy Story, Finding Nemo, Shrek, Monsters Inc., Lion King
HORROR_FILMS = ["1258", "1214", "1982", "1997", "1407"]  # The Shining, Alien, Halloween, The Exorcist, Scream
ITEMS_PER_TASTE = 5


@dataclass(frozen=True)
class Script:
    """What the session clicks (first), views and buys (second), types, and filters on."""

    first: list[str]
    second: list[str]
    query: str
    include: str
    exclude: str
    watch: tuple[str, ...]
    tastes: tuple[str, str]  # what the first and the second items are, in words


MOVIELENS = Script(FAMILY_FILMS, HORROR_FILMS, "light funny comedy for the weekend", "Sci-Fi", "Horror",
                   ("Animation", "Children", "Horror", "Comedy"), ("family animations", "horror films"))


def script_for(items: list[common_pb2.Item]) -> Script | None:
    """A script from a catalog's items (None: fewer than two categories with enough items)."""
    if {*FAMILY_FILMS, *HORROR_FILMS} <= {it.item_id for it in items}:
        return MOVIELENS
    sizes = Counter(c for it in items for c in it.categories)
    # The most specific large categories: a root every item shares says nothing about taste.
    common = [c for c, n in sizes.most_common() if n < 0.5 * len(items) and n >= ITEMS_PER_TASTE]
    if len(common) < 2:
        return None
    first, second = common[0], next((c for c in common[1:] if not _overlap(items, common[0], c)), common[1])

    def only(this: str, other: str) -> list[str]:
        return [it.item_id for it in items if this in it.categories and other not in it.categories][:ITEMS_PER_TASTE]

    return Script(only(first, second), only(second, first), f"something like {first.lower()}", second, first,
                  (first, second), (first, second))


def _overlap(items: list[common_pb2.Item], a: str, b: str) -> bool:
    return sum(a in it.categories and b in it.categories for it in items) > ITEMS_PER_TASTE


def _show(title: str, reply, watch: tuple[str, ...] = ()) -> None:
    print(f"\n== {title}")
    stages = ", ".join(f"{s.stage} {s.ms:.1f}" for s in reply.stage_latency)
    degraded = f"  DEGRADED: {', '.join(reply.degraded)}" if reply.degraded else ""
    print(f"   {reply.total_ms:.1f} ms ({stages}){degraded}")
    for i, item in enumerate(reply.items, start=1):
        print(f"   {i:2}. {item.title[:48]:48} {'|'.join(item.categories)[:40]:40} {'; '.join(item.reasons)}")
    if watch:
        counts = Counter(c for item in reply.items for c in item.categories)
        share = "  ".join(f"{g}: {counts[g]}/{len(reply.items)}" for g in watch)
        print(f"   category mix -> {share}")


def load_script(var: Path | None = None) -> Script:
    """The var's catalog's script; MovieLens's when the var holds no imported catalog."""
    from recmesh.tools.catalog.snapshot import read_items

    path = var_paths(var).catalog_items
    if not path.is_file():
        return MOVIELENS
    return script_for(list(read_items(path))) or MOVIELENS


def run_demo(target: str, user_id: str | None = None, script: Script | None = None) -> None:
    s = load_script() if script is None else script
    user = user_id or f"demo-{uuid.uuid4().hex[:6]}"
    with RecmeshClient(target, timeout_s=2.0) as rm:
        print(f"scripted session for a new user {user!r} against {target}")
        _show("1. a brand-new user: nothing known yet", rm.recommend(user, k=8), s.watch)

        rm.track_events(Event(user, item, "click") for item in s.first)
        _show(f"2. after clicking {len(s.first)} items ({s.tastes[0]})", rm.recommend(user, k=8), s.watch)

        rm.track_events(Event(user, item, "view") for item in s.second)
        rm.track(user, s.second[0], "purchase")
        _show(f"3. then {len(s.second)} items viewed ({s.tastes[1]}), one bought", rm.recommend(user, k=8), s.watch)

        _show(f'4. typing "{s.query}"', rm.recommend(user, query=s.query, k=8), s.watch)

        _show(f"5. only {s.include}, nothing {s.exclude} (filters)",
              rm.recommend(user, k=8, include_categories=[s.include], exclude_categories=[s.exclude]), s.watch)

        profile = rm.profile(user)
        tops = ", ".join(f"{c.category} {c.weight:.0%}" for c in profile.top_categories)
        print(f"\n== profile: {profile.event_count} events; top categories: {tops}")
