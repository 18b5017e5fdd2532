"""Which variant of an experiment a user sees: a stable hash of the user id, cut by shares.

A user's bucket is BLAKE2b(salt ‖ user id) read as a uniform number in [0, 1); the variants own
consecutive ranges of that interval in the order they are declared, each as wide as its share.
The same user id always lands in the same bucket (sticky for the experiment's life, on every
gateway replica, with no state to look up), shares hold in expectation, and experiments with
different salts assign independently of each other."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from recmesh.common.errors import InvalidArgument

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Shares are stored as given; this much slack in their sum absorbs decimal input (0.1 + 0.2 ...).
SHARE_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Variant:
    """One arm. share: 0 < share <= 1 of the users. overrides: what it serves differently
    (names and meaning are the serving layer's, e.g. {"diversity": 0.3})."""

    name: str
    share: float
    overrides: dict[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """variants: declared order is assignment order; shares sum to 1. salt: defaults to the
    experiment's name."""

    name: str
    variants: tuple[Variant, ...]
    salt: str = ""

    def __post_init__(self) -> None:
        check_experiment(self)

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    def assign(self, user_id: str) -> Variant:
        """The user's variant; the same for every call with the same user id."""
        point = bucket(self.hash_salt, user_id)
        upper = 0.0
        for variant in self.variants:
            upper += variant.share
            if point < upper:
                return variant
        return self.variants[-1]  # point just below 1.0 with shares summing to 1 - 1e-12


def bucket(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) from the first 8 bytes of BLAKE2b(salt, user_id): the salt is
    the hash's key, so "a" + "bc" and "ab" + "c" do not collide."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def check_experiment_name(name: str, field: str) -> str:
    """An experiment's or a variant's name: INVALID_ARGUMENT naming the field unless it is 1..64
    of [A-Za-z0-9_.-]."""
    if not NAME.fullmatch(name):
        raise InvalidArgument(field, "1..64 of [A-Za-z0-9_.-]")
    return name


def check_experiment(experiment: Experiment, field_prefix: str = "experiment") -> None:
    """INVALID_ARGUMENT naming the field: name and variant names of [A-Za-z0-9_.-]{1,64}, at least
    two variants with distinct names, each share in (0, 1], shares summing to 1."""
    check_experiment_name(experiment.name, f"{field_prefix}.name")
    if len(experiment.variants) < 2:
        raise InvalidArgument(f"{field_prefix}.variants", "at least two variants are needed to compare")
    names: set[str] = set()
    for i, variant in enumerate(experiment.variants):
        at = f"{field_prefix}.variants[{i}]"
        check_experiment_name(variant.name, f"{at}.name")
        if variant.name in names:
            raise InvalidArgument(f"{at}.name", f"duplicate variant {variant.name!r}")
        names.add(variant.name)
        if not (math.isfinite(variant.share) and 0.0 < variant.share <= 1.0):
            raise InvalidArgument(f"{at}.share", f"must be in (0, 1], got {variant.share}")
    total = math.fsum(v.share for v in experiment.variants)
    if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
        raise InvalidArgument(f"{field_prefix}.variants", f"shares must sum to 1, got {total}")
