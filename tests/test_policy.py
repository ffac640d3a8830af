"""Tests for geofence.policy and the rule packs in geofence/packs/.

Expected values are computed here from the pack files with tomllib and from the statutes' feet,
never with the module's own combining code.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

import geofence
from geofence.categories import Category
from geofence.errors import PolicyError
from geofence.policy import Policy, available_packs, load_policy_text

PACKS = Path(geofence.__file__).resolve().parent / "packs"
BUNDLED_POLICY = Path(__file__).resolve().parent.parent / "zones" / "policy.toml"
FOOT = 0.3048
STATES = ["washington", "new-york", "california", "connecticut", "maryland", "nevada"]
HEALTH = ["hospital", "clinic", "reproductive_health", "mental_health", "addiction_treatment"]
ALL = [c.value for c in Category]
WHERE = "policy.toml"


def load(text: str) -> Policy:
    return load_policy_text(text, WHERE)


def problems_of(text: str) -> list[tuple[str, str]]:
    """(where, message) of every problem in a policy that must be rejected."""
    with pytest.raises(PolicyError) as info:
        load(text)
    assert all(p.severity == "error" for p in info.value.problems)
    return [(p.file, p.message) for p in info.value.problems]


def pack_toml(name: str) -> dict[str, Any]:
    return tomllib.loads((PACKS / f"{name}.toml").read_text(encoding="utf-8"))


def pack_layers(name: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """A pack's [defaults] and [categories.*] after following `extends` (child wins)."""
    data = pack_toml(name)
    defaults: dict[str, float] = {}
    categories: dict[str, dict[str, float]] = {}
    if "extends" in data:
        parent_defaults, parent_categories = pack_layers(data["extends"])
        defaults.update(parent_defaults)
        categories = {c: dict(v) for c, v in parent_categories.items()}
    defaults.update(data.get("defaults", {}))
    for c, table in data.get("categories", {}).items():
        categories.setdefault(c, {}).update(table)
    return defaults, categories


def pack_rule(name: str, category: str) -> dict[str, float]:
    """The buffer_m and lookback_days a (non-combining) pack sets for one category."""
    defaults, categories = pack_layers(name)
    return {**defaults, **categories.get(category, {})}


# --- the packs ---------------------------------------------------------------------------------


def test_the_shipped_packs() -> None:
    on_disk = sorted(p.stem for p in PACKS.glob("*.toml"))
    assert available_packs() == on_disk
    assert set(on_disk) == {*STATES, "us-strictest", "baseline", "none"}


@pytest.mark.parametrize("name", sorted(set(available_packs()) - {"none"}))
def test_every_pack_loads_with_a_rule_for_every_category(name: str) -> None:
    policy = load(f'pack = "{name}"\n')
    assert policy.pack == name
    assert policy.warnings == ()
    assert sorted(c.value for c in policy.rules) == sorted(ALL)
    for c, rule in policy.rules.items():
        # Pack values are the rule when the policy asks for nothing more.
        if name != "us-strictest":
            expected = pack_rule(name, c.value)
            assert (rule.buffer_m, rule.lookback_days) == (
                expected["buffer_m"],
                expected["lookback_days"],
            )
        assert rule.buffer_m > 0
        assert rule.lookback_days >= 30  # the Copley Advertising floor of a sane default
        assert rule.lookback_s == rule.lookback_days * 86_400


def test_none_pack_loads_with_its_own_defaults_and_no_floor() -> None:
    policy = load('pack = "none"\n[defaults]\nbuffer_m = 10\nlookback_days = 1\n')
    assert policy.warnings == ()
    assert {(r.buffer_m, r.lookback_days) for r in policy.rules.values()} == {(10.0, 1.0)}
    assert all(r.set_by == "policy [defaults]" for r in policy.rules.values())


def test_us_strictest_is_the_max_of_the_state_packs_per_category() -> None:
    assert pack_toml("us-strictest")["combine"] == STATES
    policy = load('pack = "us-strictest"\n')
    for c in Category:
        per_state = [pack_rule(s, c.value) for s in STATES]
        rule = policy.rule(c)
        assert rule.buffer_m == max(r["buffer_m"] for r in per_state), c
        assert rule.lookback_days == max(r["lookback_days"] for r in per_state), c
    # And the strictest really is stricter than (or equal to) each state, somewhere strictly.
    assert (
        policy.rule(Category.MENTAL_HEALTH).buffer_m
        > pack_rule("nevada", "mental_health")["buffer_m"]
    )


def test_default_policy_is_us_strictest() -> None:
    default = Policy.default()
    strictest = load('pack = "us-strictest"\n')
    assert default.pack == "us-strictest"
    assert dict(default.rules) == dict(strictest.rules)
    assert dict(Policy.load(BUNDLED_POLICY).rules) == dict(strictest.rules)


def test_strictest_names_the_statute_that_sets_a_buffer() -> None:
    rule = Policy.default().rule(Category.HOSPITAL)
    assert rule.buffer_m == 2000 * FOOT
    assert "washington" in rule.set_by and "RCW 19.373" in rule.set_by


@pytest.mark.parametrize(
    ("pack", "categories", "feet"),
    [
        ("washington", HEALTH, 2000),
        ("new-york", HEALTH, 1850),
        ("california", ["reproductive_health"], 1850),
        ("connecticut", ["mental_health", "reproductive_health"], 1750),
        ("maryland", ["mental_health", "reproductive_health"], 1750),
        ("nevada", HEALTH, 1750),
    ],
)
def test_statute_distances(pack: str, categories: list[str], feet: int) -> None:
    metres = feet * FOOT
    policy = load(f'pack = "{pack}"\n')
    data = pack_toml(pack)
    for c in categories:
        assert policy.rule(Category(c)).buffer_m == pytest.approx(metres, abs=1e-9)
        # Written in the state's own file, not inherited by accident.
        assert data["categories"][c]["buffer_m"] == pytest.approx(metres, abs=1e-9)
    assert f"{feet:,} f" in (PACKS / f"{pack}.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", available_packs())
def test_every_pack_cites_its_source(name: str) -> None:
    cites = pack_toml(name).get("cites")
    if name == "none":
        assert cites == ""
    else:
        assert isinstance(cites, str) and cites.strip()


# --- policy file errors ------------------------------------------------------------------------

VALID_CATEGORIES = ", ".join(ALL)


def test_unknown_top_level_key() -> None:
    assert problems_of('pack = "washington"\nbufer_m = 600\n') == [
        (
            WHERE,
            "unknown key 'bufer_m'; valid keys: beacons, categories, defaults, pack, presence, "
            "requests",
        )
    ]


def test_unknown_category_with_suggestion() -> None:
    assert problems_of("[categories.hospitl]\nbuffer_m = 700\n") == [
        (
            WHERE,
            "[categories.hospitl]: unknown category 'hospitl' (did you mean 'hospital'?); "
            f"valid categories: {VALID_CATEGORIES}",
        )
    ]


def test_unknown_key_inside_a_category_table() -> None:
    assert problems_of("[categories.clinic]\nbuffer = 700\nlookback_days = 90\n") == [
        (
            f"{WHERE} [categories.clinic]",
            "unknown key 'buffer'; valid keys: buffer_m, lookback_days",
        )
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"600"', "buffer_m must be a number, not '600'"),
        ("true", "buffer_m must be a number, not True"),
        ("-5", "buffer_m must be finite and >= 0, not -5"),
        ("inf", "buffer_m must be finite and >= 0, not inf"),
    ],
)
def test_buffer_must_be_a_number(value: str, message: str) -> None:
    assert problems_of(f"[defaults]\nbuffer_m = {value}\n") == [(f"{WHERE} [defaults]", message)]


def test_negative_lookback() -> None:
    assert problems_of("[categories.shelter]\nlookback_days = -1\n") == [
        (f"{WHERE} [categories.shelter]", "lookback_days must be finite and >= 0, not -1")
    ]


def test_unknown_pack() -> None:
    packs = ", ".join(available_packs())
    assert problems_of('pack = "oregon"\n') == [
        ("pack oregon", f"unknown pack 'oregon'; available packs: {packs}")
    ]
    assert problems_of("pack = 3\n") == [(WHERE, "pack must be a string, not 3")]


@pytest.mark.parametrize(
    ("section", "text", "message"),
    [
        (
            "requests",
            'ip_location = "maybe"',
            "ip_location must be one of ('reject', 'circle'), not 'maybe'",
        ),
        (
            "requests",
            "missing_accuracy_m = -1",
            'missing_accuracy_m must be a finite number >= 0 or "reject", not -1',
        ),
        (
            "requests",
            'max_accuracy_m = "big"',
            "max_accuracy_m must be a finite number >= 0, not 'big'",
        ),
        (
            "requests",
            "timeout = 3",
            "unknown key 'timeout'; valid keys: ip_accuracy_m, "
            "ip_location, max_accuracy_m, missing_accuracy_m, no_device_id, no_location",
        ),
        ("beacons", 'unknown = "trust"', "unknown must be one of ('reject', 'allow'), not 'trust'"),
        (
            "presence",
            'rule = "anywhere"',
            "rule must be one of ('circle_intersects', 'center_inside'), "
            "not 'anywhere'",
        ),
    ],
)
def test_bad_section_values(section: str, text: str, message: str) -> None:
    assert problems_of(f"[{section}]\n{text}\n") == [(f"{WHERE} [{section}]", message)]


def test_every_problem_is_listed_not_just_the_first() -> None:
    found = problems_of(
        'pack = "oregon"\ncolour = "red"\n'
        "[categories.hospitl]\nbuffer_m = 1\n"
        '[categories.clinic]\nbuffer = 1\nbuffer_m = "far"\nlookback_days = -3\n'
        '[requests]\nip_location = "maybe"\n'
    )
    messages = [m for _, m in found]
    assert len(found) == 7
    assert messages[0].startswith("unknown key 'colour'")
    assert messages[1].startswith("unknown pack 'oregon'")
    assert "did you mean 'hospital'?" in messages[2]
    assert messages[3:6] == [
        "unknown key 'buffer'; valid keys: buffer_m, lookback_days",
        "buffer_m must be a number, not 'far'",
        "lookback_days must be finite and >= 0, not -3",
    ]
    assert messages[6].startswith("ip_location must be one of")


def test_not_toml() -> None:
    (where, message), *rest = problems_of('pack = "washington\n')
    assert rest == [] and where == WHERE and message.startswith("not valid TOML: ")


def test_none_without_defaults_names_every_missing_key() -> None:
    found = problems_of('pack = "none"\n')
    assert len(found) == 2 * len(ALL)
    for c in ALL:
        for key in ("buffer_m", "lookback_days"):
            assert (
                WHERE,
                f"no {key} for category {c}: pack 'none' sets none; "
                f"set [defaults] {key} or [categories.{c}] {key}",
            ) in found
    # Half a [defaults] names only the other half.
    found = problems_of('pack = "none"\n[defaults]\nbuffer_m = 100\n')
    assert len(found) == len(ALL)
    assert all("no lookback_days for category" in m for _, m in found)


# --- floors ------------------------------------------------------------------------------------


def test_value_below_the_floor_warns_and_the_floor_applies() -> None:
    policy = load('pack = "washington"\n[categories.hospital]\nbuffer_m = 100\nlookback_days = 7\n')
    rule = policy.rule(Category.HOSPITAL)
    assert (rule.buffer_m, rule.lookback_days) == (2000 * FOOT, 60.0)
    assert rule.set_by.startswith("pack washington")
    assert len(policy.warnings) == 2
    assert all(w.severity == "warning" and w.file == WHERE for w in policy.warnings)
    buffer_warning, lookback_warning = (w.message for w in policy.warnings)
    assert buffer_warning.startswith("policy [categories.hospital] buffer_m = 100 is below pack ")
    assert buffer_warning.endswith("'s 609.6 for hospital; the pack's value applies")
    assert lookback_warning.startswith("policy [categories.hospital] lookback_days = 7 is below")
    assert lookback_warning.endswith("'s 60 for hospital; the pack's value applies")


def test_defaults_below_the_floor_warn_per_category() -> None:
    policy = load('pack = "us-strictest"\n[defaults]\nbuffer_m = 100\n')
    warned = {w.message.split(" for ")[-1].split(";")[0] for w in policy.warnings}
    assert warned == set(ALL)  # every pack floor is above 100 m
    assert all(r.buffer_m >= 150 for r in policy.rules.values())


def test_value_above_the_floor_applies() -> None:
    policy = load(
        'pack = "washington"\n[defaults]\nlookback_days = 90\n'
        "[categories.hospital]\nbuffer_m = 1000\n"
    )
    assert policy.warnings == ()
    hospital = policy.rule(Category.HOSPITAL)
    assert (hospital.buffer_m, hospital.lookback_days) == (1000.0, 90.0)
    assert hospital.set_by == "policy [categories.hospital]"
    clinic = policy.rule(Category.CLINIC)  # untouched buffer: the pack's
    assert (clinic.buffer_m, clinic.lookback_days) == (2000 * FOOT, 90.0)
    assert all(r.lookback_days == 90.0 for r in policy.rules.values())


def test_value_equal_to_the_floor_is_no_warning() -> None:
    policy = load('pack = "nevada"\n[categories.clinic]\nbuffer_m = 533.4\n')
    assert policy.warnings == ()
    assert policy.rule(Category.CLINIC).buffer_m == 533.4


# --- request, beacon and presence rules --------------------------------------------------------


def test_missing_accuracy_reject_gives_none() -> None:
    assert Policy.default().requests.missing_accuracy_m == 1000.0
    policy = load('[requests]\nmissing_accuracy_m = "reject"\n')
    assert policy.requests.missing_accuracy_m is None


def test_section_values_are_read() -> None:
    policy = load(
        '[requests]\nip_location = "circle"\nip_accuracy_m = 5000\nmax_accuracy_m = 2500\n'
        'no_device_id = "reject"\n[beacons]\nunknown = "allow"\n'
        '[presence]\nrule = "center_inside"\n'
    )
    r = policy.requests
    assert (r.ip_location, r.ip_accuracy_m, r.max_accuracy_m, r.no_device_id) == (
        "circle",
        5000.0,
        2500.0,
        "reject",
    )
    assert isinstance(r.ip_accuracy_m, float)
    assert (policy.beacons.unknown, policy.beacons.inactive) == ("allow", "reject")
    assert policy.presence.rule == "center_inside"


def test_fingerprint_follows_the_text_and_the_pack() -> None:
    a = load('pack = "washington"\n')
    assert a.fingerprint == load('pack = "washington"\n').fingerprint
    assert a.fingerprint != load('pack = "nevada"\n').fingerprint
    assert a.fingerprint != load('pack = "washington"\n# a comment\n').fingerprint


def test_max_lookback() -> None:
    policy = load("[categories.court]\nlookback_days = 400\n")
    assert policy.max_lookback_s == 400 * 86_400


def test_problems_follow_the_file_order() -> None:
    """Stable messages: a table's bad values are reported in the order they are written."""
    assert problems_of('[defaults]\nlookback_days = -1\nbuffer_m = "x"\n') == [
        (f"{WHERE} [defaults]", "lookback_days must be finite and >= 0, not -1"),
        (f"{WHERE} [defaults]", "buffer_m must be a number, not 'x'"),
    ]
    assert [m for _, m in problems_of('[requests]\nno_location = "x"\nip_location = "y"\n')] == [
        "no_location must be one of ('reject', 'allow'), not 'x'",
        "ip_location must be one of ('reject', 'circle'), not 'y'",
    ]
