"""Branch conditions (§2 `branch`): a small tree evaluated on what an enrollment knows.

A condition is a mapping with one key, in the shape a campaign file writes it:
- `{"replied": true}`: the patient replied (any channel) since the enrollment began;
- `{"consent": "sms"}`: the patient may be messaged on `sms` (no opt-out of it or of all;
  explicit marketing consent joins this when §5 consent is enforced);
- `{"sent": "reminder-48h"}`: that step of this enrollment was sent;
- `{"attribute": {"field": "age", "op": "ge", "value": 60}}`: a comparison on the
  subject's attributes and dates (`op`: eq, ne, lt, le, gt, ge, in, exists);
- `{"all": [...]}`, `{"any": [...]}`, `{"not": {...}}`.
`check` raises `InvalidCampaign` for a malformed tree; `holds` never raises for a
well-formed one (a missing attribute compares false, except `ne` and `not exists`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.errors import InvalidCampaign

Condition = Mapping[str, Any]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge, "in": lambda a, b: a in b,
}
LEAVES = frozenset({"replied", "consent", "sent", "attribute"})
NODES = frozenset({"all", "any", "not"})


@dataclass(frozen=True)
class Facts:
    """What a condition may look at, as of the moment the branch is taken."""

    replied: bool = False
    opted_out_of_all: bool = False
    opted_out_channels: frozenset[str] = frozenset()
    sent_steps: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)


def check(cond: Condition, where: str = "condition") -> None:
    """Refuse a malformed condition tree. Raises `InvalidCampaign` naming `where`."""
    if not isinstance(cond, Mapping) or len(cond) != 1:
        raise InvalidCampaign(f"{where}: a condition has exactly one key of "
                              f"{sorted(LEAVES | NODES)}")
    (kind, arg), = cond.items()
    if kind in ("all", "any"):
        if not isinstance(arg, Sequence) or isinstance(arg, str) or not arg:
            raise InvalidCampaign(f"{where}.{kind}: a non-empty list of conditions")
        for i, child in enumerate(arg):
            check(child, f"{where}.{kind}[{i}]")
    elif kind == "not":
        check(arg, f"{where}.not")
    elif kind == "attribute":
        if not isinstance(arg, Mapping) or "field" not in arg or arg.get("op", "eq") not in (
                *_COMPARE, "exists"):
            raise InvalidCampaign(f"{where}.attribute: needs field and op of "
                                  f"{sorted([*_COMPARE, 'exists'])}")
    elif kind not in LEAVES:
        raise InvalidCampaign(f"{where}: unknown condition {kind!r}")


def holds(cond: Condition, facts: Facts) -> bool:
    """Whether `cond` (well-formed, see `check`) holds for `facts`."""
    (kind, arg), = cond.items()
    match kind:
        case "all":
            return all(holds(c, facts) for c in arg)
        case "any":
            return any(holds(c, facts) for c in arg)
        case "not":
            return not holds(arg, facts)
        case "replied":
            return bool(facts.replied == bool(arg))
        case "consent":
            return not facts.opted_out_of_all and arg not in facts.opted_out_channels
        case "sent":
            return bool(arg in facts.sent_steps)
        case _:
            return _compare(arg, facts.attributes)


def _compare(arg: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    op, name = arg.get("op", "eq"), arg["field"]
    if op == "exists":
        return (name in attributes) == bool(arg.get("value", True))
    if name not in attributes:
        return bool(op == "ne")
    try:
        return bool(_COMPARE[op](attributes[name], arg.get("value")))
    except TypeError:  # comparing a number with a text: not a match, never a crash
        return False
