"""The policy: buffers and lookbacks per category, and how doubtful requests are treated.

A policy file (`zones/policy.toml`) names a rule pack (`geofence/packs/*.toml`). The pack's
values are floors: the policy may widen a buffer or lengthen a lookback, never go below what the
pack (and the statute it cites) sets; a lower value is reported as a warning and the pack's value
applies. `pack = "none"` opts out of every floor.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from geofence.categories import CATEGORIES, Category, parse_category
from geofence.errors import PolicyError, Problem

T = TypeVar("T")

DEFAULT_PACK = "us-strictest"
DAY_S = 86_400.0

_RULE_KEYS = {"buffer_m", "lookback_days"}
_PACK_KEYS = {"name", "title", "cites", "extends", "combine", "defaults", "categories"}
_POLICY_KEYS = {"pack", "defaults", "categories", "requests", "beacons", "presence"}


@dataclass(frozen=True, slots=True)
class CategoryRule:
    """How one category is protected: a buffer around the perimeter and a lookback window."""

    buffer_m: float
    lookback_days: float
    set_by: str  # where the buffer came from, e.g. "pack washington (RCW 19.373.080 ...)"

    @property
    def lookback_s(self) -> float:
        return self.lookback_days * DAY_S


@dataclass(frozen=True, slots=True)
class RequestRules:
    """How requests with missing or doubtful data are judged. See the README for the why."""

    # Radius assumed when a request carries no accuracy; None rejects it as imprecise_location.
    # 1,000 m covers a coordinate truncated to two decimals (up to ~785 m off) and cell fixes.
    missing_accuracy_m: float | None = 1000.0
    # Circles wider than this are imprecise_location: such a fix says little about where the
    # person is, and zone data is never complete enough to clear a 10 km circle with confidence.
    max_accuracy_m: float = 10_000.0
    # IP-derived locations (OpenRTB geo.type 2): "reject" (imprecise_location) or "circle" (judge
    # them as a circle of ip_accuracy_m, or the reported accuracy if it is larger).
    ip_location: str = "reject"
    ip_accuracy_m: float = 25_000.0
    # Requests without a device id: "location_only" (judged on location alone) or "reject".
    no_device_id: str = "location_only"
    # Requests with neither a usable location nor a beacon: "reject" or "allow" (not
    # location-triggered). Both give reason no_location.
    no_location: str = "reject"


@dataclass(frozen=True, slots=True)
class BeaconRules:
    """How beacon sightings are judged."""

    unknown: str = "reject"  # an id not in the registry: "reject" (unknown_beacon) or "allow"
    inactive: str = "reject"  # status inactive: "reject" (unknown_beacon) or "as_active"
    decommissioned: str = "reject"  # status decommissioned: "reject" or "ignore"


@dataclass(frozen=True, slots=True)
class PresenceRules:
    """When a fix counts as presence inside a zone (which taints the device for the lookback)."""

    # "circle_intersects": the accuracy circle reaches the zone itself (not its buffer): the person
    # may have been inside, so remember it (conservative, the default). "center_inside": only the
    # reported point.
    rule: str = "circle_intersects"


@dataclass(frozen=True, slots=True)
class Policy:
    """The resolved policy: a rule for every category plus request, beacon and presence rules."""

    pack: str
    rules: Mapping[Category, CategoryRule]
    requests: RequestRules = field(default_factory=RequestRules)
    beacons: BeaconRules = field(default_factory=BeaconRules)
    presence: PresenceRules = field(default_factory=PresenceRules)
    fingerprint: str = ""  # hash of the policy text and every pack it used
    warnings: tuple[Problem, ...] = ()

    def rule(self, category: Category) -> CategoryRule:
        return self.rules[category]

    @property
    def max_lookback_s(self) -> float:
        return max(r.lookback_s for r in self.rules.values())

    @classmethod
    def default(cls) -> Policy:
        """The policy used when a zone folder has no policy.toml: the default pack."""
        return load_policy_text(f'pack = "{DEFAULT_PACK}"\n', "<default policy>")

    @classmethod
    def load(cls, path: Path) -> Policy:
        return load_policy_text(path.read_text(encoding="utf-8"), str(path))


# --- packs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pack:
    name: str
    cites: str
    defaults: dict[str, float]
    categories: dict[Category, dict[str, float]]
    text: str
    # Per category, the pack (and statute) whose buffer applies: "washington (RCW 19.373.080)".
    origin: dict[Category, str]


def available_packs() -> list[str]:
    """Names of the rule packs shipped with geofence."""
    folder = resources.files("geofence") / "packs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_pack(name: str, problems: list[Problem], seen: tuple[str, ...] = ()) -> _Pack | None:
    where = f"pack {name}"
    if name in seen:
        problems.append(Problem(where, f"pack {name!r} extends itself through {seen}"))
        return None
    if name not in available_packs():
        problems.append(
            Problem(
                where, f"unknown pack {name!r}; available packs: {', '.join(available_packs())}"
            )
        )
        return None
    text = (resources.files("geofence") / "packs" / f"{name}.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    _unknown_keys(data, _PACK_KEYS, where, problems)
    cites = str(data.get("cites", ""))
    defaults: dict[str, float] = {}
    categories: dict[Category, dict[str, float]] = {}
    origin: dict[Category, str] = {}
    own = f"{name} ({cites})" if cites else name
    texts = [text]

    if "combine" in data:
        # Strictest-of: the largest buffer and longest lookback of each listed pack, per category.
        for member_name in data["combine"]:
            member = _read_pack(member_name, problems, (*seen, name))
            if member is None:
                continue
            texts.append(member.text)
            for c in CATEGORIES:
                resolved = _pack_value(member, c)
                slot = categories.setdefault(c, {})
                if resolved.get("buffer_m", -math.inf) > slot.get("buffer_m", -math.inf):
                    origin[c] = member.origin[c]
                for key, value in resolved.items():
                    slot[key] = max(slot.get(key, -math.inf), value)
        return _Pack(name, cites, defaults, categories, "\n".join(texts), origin)

    if "extends" in data:
        parent = _read_pack(str(data["extends"]), problems, (*seen, name))
        if parent is not None:
            texts.append(parent.text)
            defaults.update(parent.defaults)
            for c, values in parent.categories.items():
                categories[c] = dict(values)
            origin.update(parent.origin)
    defaults.update(_rule_table(data.get("defaults", {}), f"{where} [defaults]", problems))
    for cname, table in dict(data.get("categories", {})).items():
        try:
            c = parse_category(cname)
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        categories.setdefault(c, {}).update(
            _rule_table(table, f"{where} [categories.{cname}]", problems)
        )
    own_tables = dict(data.get("categories", {}))
    for c in CATEGORIES:
        if "buffer_m" in dict(own_tables.get(c.value, {})) or c not in origin:
            origin[c] = own
    return _Pack(name, cites, defaults, categories, "\n".join(texts), origin)


def _pack_value(pack: _Pack, c: Category) -> dict[str, float]:
    out = dict(pack.defaults)
    out.update(pack.categories.get(c, {}))
    return out


def _rule_table(table: Any, where: str, problems: list[Problem]) -> dict[str, float]:
    if not isinstance(table, dict):
        problems.append(Problem(where, "must be a table"))
        return {}
    _unknown_keys(table, _RULE_KEYS, where, problems)
    out: dict[str, float] = {}
    for key in [k for k in table if k in _RULE_KEYS]:  # file order: stable messages
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(Problem(where, f"{key} must be a number, not {value!r}"))
        elif not math.isfinite(value) or value < 0:
            problems.append(Problem(where, f"{key} must be finite and >= 0, not {value!r}"))
        else:
            out[key] = float(value)
    return out


def _unknown_keys(
    table: dict[str, Any], known: set[str], where: str, problems: list[Problem]
) -> None:
    for key in sorted(set(table) - known):
        problems.append(
            Problem(where, f"unknown key {key!r}; valid keys: {', '.join(sorted(known))}")
        )


# --- policy files ------------------------------------------------------------------------------


def load_policy_text(text: str, where: str) -> Policy:
    """Parse and resolve a policy file's text; raise PolicyError naming every problem."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([Problem(where, f"not valid TOML: {exc}")]) from None
    _unknown_keys(data, _POLICY_KEYS, where, problems)

    pack_name = data.get("pack", DEFAULT_PACK)
    if not isinstance(pack_name, str):
        problems.append(Problem(where, f"pack must be a string, not {pack_name!r}"))
        pack_name = DEFAULT_PACK
    pack = _read_pack(pack_name, problems)

    defaults = _rule_table(data.get("defaults", {}), f"{where} [defaults]", problems)
    overrides: dict[Category, dict[str, float]] = {}
    categories_table = data.get("categories", {})
    if not isinstance(categories_table, dict):
        problems.append(Problem(where, "[categories] must be a table of tables"))
        categories_table = {}
    for cname, table in categories_table.items():
        try:
            c = parse_category(cname)
        except ValueError as exc:
            problems.append(Problem(where, f"[categories.{cname}]: {exc}"))
            continue
        overrides[c] = _rule_table(table, f"{where} [categories.{cname}]", problems)

    rules: dict[Category, CategoryRule] = {}
    if pack is not None:
        for c in CATEGORIES:
            rules_c = _resolve(c, pack, defaults, overrides.get(c, {}), where, problems, warnings)
            if rules_c is not None:
                rules[c] = rules_c

    requests = _section(data, "requests", RequestRules, where, problems)
    beacons = _section(data, "beacons", BeaconRules, where, problems)
    presence = _section(data, "presence", PresenceRules, where, problems)
    if problems:
        raise PolicyError(problems)
    assert pack is not None
    fingerprint = hashlib.sha256((text + "\0" + pack.text).encode("utf-8")).hexdigest()
    return Policy(
        pack=pack_name,
        rules=rules,
        requests=requests,
        beacons=beacons,
        presence=presence,
        fingerprint=fingerprint,
        warnings=tuple(warnings),
    )


def _resolve(
    c: Category,
    pack: _Pack,
    defaults: dict[str, float],
    override: dict[str, float],
    where: str,
    problems: list[Problem],
    warnings: list[Problem],
) -> CategoryRule | None:
    floor = _pack_value(pack, c)
    values: dict[str, float] = {}
    origin: dict[str, str] = {}
    for key in ("buffer_m", "lookback_days"):
        asked, asked_where = None, ""
        if key in override:
            asked, asked_where = override[key], f"policy [categories.{c.value}]"
        elif key in defaults:
            asked, asked_where = defaults[key], "policy [defaults]"
        pack_value = floor.get(key)
        pack_where = f"pack {pack.name}"
        if pack.origin.get(c, pack.name) != pack.name:
            pack_where += f": {pack.origin[c]}"
        if asked is None and pack_value is None:
            problems.append(
                Problem(
                    where,
                    f"no {key} for category {c.value}: pack {pack.name!r} sets none; "
                    f"set [defaults] {key} or [categories.{c.value}] {key}",
                )
            )
            continue  # name every missing key, not only the first
        if asked is not None and pack_value is not None and asked < pack_value:
            warnings.append(
                Problem(
                    where,
                    f"{asked_where} {key} = {asked:g} is below {pack_where}'s "
                    f"{pack_value:g} for {c.value}; the pack's value applies",
                    severity="warning",
                )
            )
        if asked is not None and (pack_value is None or asked >= pack_value):
            values[key], origin[key] = asked, asked_where
        else:
            assert pack_value is not None
            values[key], origin[key] = pack_value, pack_where
    if len(values) < 2:
        return None
    return CategoryRule(values["buffer_m"], values["lookback_days"], origin["buffer_m"])


_CHOICES: dict[str, tuple[str, ...]] = {
    "ip_location": ("reject", "circle"),
    "no_device_id": ("location_only", "reject"),
    "no_location": ("reject", "allow"),
    "unknown": ("reject", "allow"),
    "inactive": ("reject", "as_active"),
    "decommissioned": ("reject", "ignore"),
    "rule": ("circle_intersects", "center_inside"),
}


def _section(
    data: dict[str, Any], name: str, cls: type[T], where: str, problems: list[Problem]
) -> T:
    """Build a rules dataclass from a policy section, naming unknown keys and bad values."""
    table = data.get(name, {})
    here = f"{where} [{name}]"
    if not isinstance(table, dict):
        problems.append(Problem(here, "must be a table"))
        return cls()
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    _unknown_keys(table, known, here, problems)
    kwargs: dict[str, Any] = {}
    for key in [k for k in table if k in known]:  # file order: stable messages
        value = table[key]
        if key in _CHOICES:
            if value not in _CHOICES[key]:
                problems.append(
                    Problem(here, f"{key} must be one of {_CHOICES[key]}, not {value!r}")
                )
                continue
        elif key == "missing_accuracy_m" and value == "reject":
            value = None
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value >= 0)
        ):
            extra = ' or "reject"' if key == "missing_accuracy_m" else ""
            problems.append(
                Problem(here, f"{key} must be a finite number >= 0{extra}, not {value!r}")
            )
            continue
        else:
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)
