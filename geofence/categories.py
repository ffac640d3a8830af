"""The sensitive-location categories a zone can belong to.

Drawn from the FTC sensitive-location orders (X-Mode, InMarket, Kochava, Gravy) and the NAI 2022
Precise Location Information standards.
"""

from __future__ import annotations

import difflib
from enum import StrEnum


class Category(StrEnum):
    """What kind of protected place a zone is."""

    HOSPITAL = "hospital"
    CLINIC = "clinic"
    REPRODUCTIVE_HEALTH = "reproductive_health"
    MENTAL_HEALTH = "mental_health"
    ADDICTION_TREATMENT = "addiction_treatment"
    PLACE_OF_WORSHIP = "place_of_worship"
    COURT = "court"
    CORRECTIONAL = "correctional"
    SHELTER = "shelter"
    SCHOOL_CHILDCARE = "school_childcare"
    MILITARY = "military"
    UNION_OFFICE = "union_office"
    LGBTQ_SERVICES = "lgbtq_services"
    IMMIGRATION_SERVICES = "immigration_services"
    ETHNIC_SERVICES = "ethnic_services"
    DEBT_SERVICES = "debt_services"
    ASSEMBLY = "assembly"

    @property
    def code(self) -> int:
        """A small stable integer, used in NumPy arrays and compiled files."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Category:
        return _BY_CODE[code]


CATEGORIES: tuple[Category, ...] = tuple(Category)
_CODES = {c: i for i, c in enumerate(CATEGORIES)}
_BY_CODE = dict(enumerate(CATEGORIES))

# Categories that health-data statutes (WA, NY, CA, CT, MD, NV) protect with a geofence ban.
HEALTH_CATEGORIES: frozenset[Category] = frozenset(
    {
        Category.HOSPITAL,
        Category.CLINIC,
        Category.REPRODUCTIVE_HEALTH,
        Category.MENTAL_HEALTH,
        Category.ADDICTION_TREATMENT,
    }
)


def parse_category(value: object) -> Category:
    """Return the category named by `value`, or raise ValueError naming the valid ones.

    The message suggests the closest valid name, since most unknown categories are typos.
    """
    text = str(value).strip().lower() if value is not None else ""
    try:
        return Category(text)
    except ValueError:
        pass
    close = difflib.get_close_matches(text, [c.value for c in CATEGORIES], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = ", ".join(c.value for c in CATEGORIES)
    raise ValueError(f"unknown category {value!r}{hint}; valid categories: {valid}")
