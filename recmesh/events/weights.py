"""Event weights: how strongly each event type says "more like this" (> 0) or "not this" (< 0).
The one table of them; every reader takes it from here.

Defaults (`EventWeights()`), per event type:

| type | weight |
|---|---|
| view | 0.5 |
| click | 1.0 |
| add_to_cart | 2.0 |
| purchase | 3.0 |
| rate | by its value (RateWeight): 1 x max(0.05, (stars - 1) / 2) |
| search | 0 (it names no item: nothing reads it; only 0 is accepted) |
| hide | -1.0 |
| dislike | -2.0 |

A rating of 5 stars weighs 2.0, 3 stars 1.0, 1 star 0.05; one without a value (0) 1.0.

Who reads them:
- the gateway (services/gateway/history.py): an item event of weight <= 0 enters neither the
  interest model's history nor the session direction, category affinity or the ranker's recent
  items (a dislike is no interest); the session direction weighs each of the newest items by its
  event's weight times its recency (recmesh.models.session.session_vector);
- the updater's online learner (services/updater/joiner.py): feedback on a shown item is labelled
  by its weight - > 0, the item was chosen and the list counts that much; < 0, the item was
  rejected (a negative, counting |weight|); 0, nothing is learned;
- `recmesh train` (recmesh.tools.eval.datasets.from_var): events of weight <= 0 are no
  interactions to learn interest from;
- `recmesh eval`'s zero-shot baseline (recmesh.tools.eval.zeroshot).

What hiding and disliking *do* (left out of every answer, similar items pushed down) follows from
the event type, not from these numbers; hide and dislike must therefore weigh <= 0.

A catalog overrides any of them in its var, `catalog/event_weights.json`
(recmesh.common.paths.VarPaths.event_weights; the services' `EVENT_WEIGHTS_FILE` setting names
another file), e.g. `{"view": 0.2, "purchase": 5, "rate": {"floor": -1}}` (a rate.floor below 0
makes low ratings rejections). Keys left out keep their defaults; an unknown key, a value of the
wrong sign or a non-finite number stops the service at start, naming the file and the key.
The interest model itself is not changed by them: it reads event types as it was trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recmesh.common.paths import var_paths
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
# Highest rating a RATE event carries (common.proto: 0..5).
MAX_RATING = 5.0


class _Strict(BaseModel):
    # strict: a number must be a JSON number (true or "1" is refused, not read as 1).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class RateWeight(_Strict):
    """A RATE event's weight: weight x max(floor, (value - neutral) x per_star); weight alone
    for a rating without a value (0)."""

    weight: float = Field(default=1.0, ge=0)
    # The rating that says nothing either way (floor aside).
    neutral: float = Field(default=1.0, ge=0, le=MAX_RATING)
    per_star: float = Field(default=0.5, ge=0)
    # The lowest a rating counts; below 0, ratings under the neutral one are rejections.
    floor: float = 0.05

    def of(self, value: float) -> float:
        if value <= 0:
            return self.weight
        return self.weight * max(self.floor, (value - self.neutral) * self.per_star)


class EventWeights(_Strict):
    """The weight of each event type (module docstring). `weight(type, value)` reads one."""

    view: float = Field(default=0.5, ge=0)
    click: float = Field(default=1.0, ge=0)
    add_to_cart: float = Field(default=2.0, ge=0)
    purchase: float = Field(default=3.0, ge=0)
    rate: RateWeight = RateWeight()
    search: float = 0.0
    hide: float = Field(default=-1.0, le=0)
    dislike: float = Field(default=-2.0, le=0)

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_as_number(cls, value):
        """`"rate": 2` is short for `"rate": {"weight": 2}`."""
        return {"weight": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("search")
    @classmethod
    def _search_is_zero(cls, value: float) -> float:
        if value != 0:
            raise ValueError("a search names no item, so nothing reads a weight for it: only 0 is accepted")
        return value

    def weight(self, event_type: int, value: float = 0.0) -> float:
        """The event's weight; 0 for a type this table does not know (EVENT_TYPE_UNSPECIFIED)."""
        if event_type == ET.EVENT_TYPE_RATE:
            return self.rate.of(value)
        name = _NAMES.get(event_type)
        return getattr(self, name) if name is not None else 0.0

    def weights(self, event_types: Iterable[int], values: Iterable[float]) -> np.ndarray:
        """weight() of each event, float32."""
        return np.array([self.weight(t, v) for t, v in zip(event_types, values, strict=True)], np.float32)


# The table's key of each event type but RATE (the proto's names, lower case, without the prefix).
_NAMES = {ET.Value(f"EVENT_TYPE_{name.upper()}"): name
          for name in ("view", "click", "add_to_cart", "purchase", "search", "hide", "dislike")}
DEFAULT = EventWeights()


def load_event_weights(path: Path | None) -> EventWeights:
    """The defaults overridden by the JSON object in `path` (None, or no file there: the
    defaults). ValueError naming the file and the key for anything wrong in it."""
    if path is None or not Path(path).is_file():
        return DEFAULT
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object of event type -> weight, e.g. {{\"view\": 0.5}}")
    try:
        return EventWeights.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
                             for err in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


def checked_file(path: Path | None) -> Path | None:
    """For a service setting naming the file: loads it once, so that a bad one stops the
    service at start (ValueError naming the file and the key; load_settings adds the setting's
    name); returns the path."""
    load_event_weights(path)
    return path


class EventWeightsSetting(BaseModel):
    """The event_weights_file setting, for the services' settings classes that read the weights
    (gateway: the interest model's inputs; updater: the learner's labels): this JSON file when it
    is there (default: the var's catalog/event_weights.json), else the defaults; checked at start."""

    event_weights_file: Path | None = Field(default_factory=lambda: var_paths().event_weights)

    @field_validator("event_weights_file")
    @classmethod
    def _event_weights_readable(cls, value: Path | None) -> Path | None:
        return checked_file(value)

    def event_weights(self) -> EventWeights:
        return load_event_weights(self.event_weights_file)
