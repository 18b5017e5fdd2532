"""A scripted session that shows one user's recommendations follow their events and words."""

from __future__ import annotations

import uuid
from collections import Counter

from recmesh.client import Event, RecmeshClient

FAMILY_FILMS = ["1", "6377", "4306", "4886", "364"]  # Toy Story, Finding Nemo, Shrek, Monsters Inc., Lion King
HORROR_FILMS = ["1258", "1214", "1982", "1997", "1407"]  # The Shining, Alien, Halloween, The Exorcist, Scream


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
        print(f"   genre mix -> {share}")


def run_demo(target: str, user_id: str | None = None) -> None:
    user = user_id or f"demo-{uuid.uuid4().hex[:6]}"
    watch = ("Animation", "Children", "Horror", "Comedy")
    with RecmeshClient(target, timeout_s=2.0) as rm:
        print(f"scripted session for a new user {user!r} against {target}")
        _show("1. a brand-new user: nothing known yet", rm.recommend(user, k=8), watch)

        rm.track_events(Event(user, item, "click") for item in FAMILY_FILMS)
        _show("2. after clicking five family animations", rm.recommend(user, k=8), watch)

        rm.track_events(Event(user, item, "view") for item in HORROR_FILMS)
        rm.track(user, HORROR_FILMS[0], "purchase")
        _show("3. the same evening: five horror films watched, one bought", rm.recommend(user, k=8), watch)

        _show('4. typing "light funny comedy for the weekend"',
              rm.recommend(user, query="light funny comedy for the weekend", k=8), watch)

        _show("5. only Sci-Fi, nothing Horror (filters)",
              rm.recommend(user, k=8, include_categories=["Sci-Fi"], exclude_categories=["Horror"]), watch)

        profile = rm.profile(user)
        tops = ", ".join(f"{c.category} {c.weight:.0%}" for c in profile.top_categories)
        print(f"\n== profile: {profile.event_count} events; top categories: {tops}")
