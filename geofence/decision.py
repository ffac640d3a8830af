"""Decisions: what the engine answers, single and batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from geofence.categories import Category
from geofence.reasons import Reason


@dataclass(frozen=True, slots=True)
class Decision:
    """May this request be targeted? With the reason, the zone that decided it, and the zone set."""

    allowed: bool
    reason: Reason
    zone_set_version: str
    zone_id: str | None = None
    category: Category | None = None
    # For RECENTLY_INSIDE: when the block ends (Unix seconds). For others, None.
    until: float | None = None
    # A short human-readable explanation (never contains a device id or coordinates).
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason": self.reason.value,
            "zone_id": self.zone_id,
            "category": self.category.value if self.category is not None else None,
            "zone_set_version": self.zone_set_version,
            "until": self.until,
            "detail": self.detail,
        }


NO_CATEGORY = 255  # in BatchDecision.category: no category involved


@dataclass(frozen=True, slots=True, eq=False)
class BatchDecision:
    """Decisions for a batch, as parallel NumPy arrays (one element per request).

    `reason` holds `Reason.code` values (compare with `Reason.X.code`, or call `reasons()`);
    `zone_index` indexes `zone_ids` (-1 where no zone is involved); `category` holds
    `Category.code` values (NO_CATEGORY where none); `until` is the end of a recently_inside
    block (NaN elsewhere). `decision(i)` gives one full Decision.
    """

    allowed: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.uint8]
    zone_index: npt.NDArray[np.int32]
    category: npt.NDArray[np.uint8]
    until: npt.NDArray[np.float64]
    zone_set_version: str
    zone_ids: tuple[str, ...] = field(repr=False)

    def __len__(self) -> int:
        return int(self.allowed.shape[0])

    def reasons(self) -> list[Reason]:
        return [Reason.from_code(int(c)) for c in self.reason]

    def zone_id_array(self) -> npt.NDArray[np.object_]:
        """Zone ids per request (None where no zone is involved)."""
        ids = np.empty(len(self.zone_ids) + 1, dtype=object)
        ids[:-1] = self.zone_ids
        ids[-1] = None
        return ids[self.zone_index]  # -1 picks the trailing None

    def decision(self, i: int) -> Decision:
        z = int(self.zone_index[i])
        c = int(self.category[i])
        u = float(self.until[i])
        return Decision(
            allowed=bool(self.allowed[i]),
            reason=Reason.from_code(int(self.reason[i])),
            zone_set_version=self.zone_set_version,
            zone_id=self.zone_ids[z] if z >= 0 else None,
            category=Category.from_code(c) if c != NO_CATEGORY else None,
            until=u if np.isfinite(u) else None,
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self.decision(i) for i in range(len(self)))
