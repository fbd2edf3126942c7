"""The rules file: the county pilot's example loads, means what RULES.md says, and bad files are refused."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bench.synthetic import DEFAULT_FACILITIES
from enrollment_svc.rules import PROGRAMS, Rules, load_rules, rules_from_text

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "rules" / "wpc-rules.yaml"
TEXT = EXAMPLE.read_text(encoding="utf-8")
RULES = load_rules(EXAMPLE)


def data() -> dict[str, Any]:
    loaded = yaml.safe_load(TEXT)
    assert isinstance(loaded, dict)
    return loaded


# --- version and digest -----------------------------------------------------------------------


def test_example_loads_with_version_and_digest() -> None:
    assert RULES.version
    assert RULES.digest == hashlib.sha256(TEXT.encode()).hexdigest()
    assert RULES.rule_version == f"{RULES.version}+{RULES.digest[:12]}"


def test_same_version_other_content_is_told_apart() -> None:
    edited = rules_from_text(TEXT.replace("candidate_max_age_hours: 72", "candidate_max_age_hours: 48"))
    assert edited.version == RULES.version
    assert edited.candidate_max_age_hours == 48
    assert edited.rule_version != RULES.rule_version
    # Even a comment changes the digest: the file is what was reviewed, byte for byte.
    assert rules_from_text(TEXT + "# reviewed\n").digest != RULES.digest


def test_a_model_built_in_code_has_no_digest() -> None:
    rules = Rules.model_validate(data())
    assert rules.digest == "" and rules.rule_version == RULES.version


# --- the example's content --------------------------------------------------------------------


def test_capacities() -> None:
    assert {p: spec.capacity for p, spec in RULES.programs.items()} == {"TOC": 300, "ISR": 240, "SUD-ENS": 720}
    assert set(RULES.priority) == set(PROGRAMS)


def test_programs_md_thresholds() -> None:
    assert (RULES.toc.min_age, RULES.toc.inpatient_admissions.months, RULES.toc.inpatient_admissions.min) == (18, 6, 3)
    assert RULES.toc.incarceration_lookback_months == 1
    assert (RULES.isr.min_age, RULES.isr.psych_admissions.months, RULES.isr.psych_admissions.min) == (18, 12, 6)
    s = RULES.sud_ens
    assert s.min_age == 0
    assert (s.sud_ed_visits.months, s.sud_ed_visits.min) == (12, 3)
    assert (s.sud_inpatient_admissions.months, s.sud_inpatient_admissions.min) == (12, 2)
    assert (s.sobering_visits.months, s.sobering_visits.min) == (12, 3)
    assert (s.residential_sud_admissions.months, s.residential_sud_admissions.min) == (12, 3)  # "more than 2"
    assert s.drug_incarcerations.min == 2
    assert s.overdose_lookback_months == 24


def test_synthetic_feed_facilities_are_participating_general_acute_hospitals() -> None:
    for facility in DEFAULT_FACILITIES:
        spec = RULES.site.facilities[facility]
        assert spec.kind == "general_acute" and spec.participating
    kinds = {f.kind for f in RULES.site.facilities.values()}
    assert {"psychiatric", "sobering_center"} <= kinds
    assert any(not f.participating for f in RULES.site.facilities.values())


def test_site() -> None:
    site = RULES.site
    assert site.county_fips == "06037" and "06037" in site.county_codes
    assert site.zone().key == "America/Los_Angeles"
    assert {"900", "918", "935"} <= set(site.county_zip_prefixes)
    assert all(len(p) == 3 and p.isdigit() for p in site.county_zip_prefixes)
    assert "PSY" in site.psychiatric_services and "7PSY" in site.psychiatric_units  # as the synthetic feed sends
    assert "MC" not in site.medi_cal_financial_classes


IN = True
OUT = False


@pytest.mark.parametrize(
    ("value_set", "code", "member"),
    [
        # SMI: F20-F29, F31, F32.2/F32.3, F33.2/F33.3
        ("smi", "F20.9", IN),
        ("smi", "F25.0", IN),
        ("smi", "F31.81", IN),
        ("smi", "F32.2", IN),
        ("smi", "F32.3", IN),
        ("smi", "F33.2", IN),
        ("smi", "F33.3", IN),
        ("smi", "F32.9", OUT),
        ("smi", "F33.1", OUT),
        ("smi", "F30.10", OUT),
        ("smi", "F41.1", OUT),
        # SUD: F10-F19 without remission codes and without nicotine
        ("sud", "F10.20", IN),
        ("sud", "F10.130", IN),
        ("sud", "F11.23", IN),
        ("sud", "F14.10", IN),
        ("sud", "F15.90", IN),
        ("sud", "F19.20", IN),
        ("sud", "F17.210", OUT),
        ("sud", "F17.211", OUT),
        ("sud", "F09", OUT),
        ("sud", "F20.9", OUT),
        # Overdose: poisonings only
        ("overdose", "T40.1X1A", IN),
        ("overdose", "T40.411A", IN),
        ("overdose", "T40.2X4A", IN),
        ("overdose", "T40.5X1D", IN),
        ("overdose", "T42.4X2A", IN),
        ("overdose", "T43.621A", IN),
        ("overdose", "T43.651A", IN),
        ("overdose", "T40.2X5A", OUT),
        ("overdose", "T40.2X6A", OUT),
        ("overdose", "T40.415A", OUT),
        ("overdose", "T42.4X5A", OUT),
        ("overdose", "T43.615A", OUT),
        ("overdose", "T43.611A", OUT),
        ("overdose", "T39.1X1A", OUT),
        # Homelessness and incarceration
        ("homelessness", "Z59.00", IN),
        ("homelessness", "Z59.01", IN),
        ("homelessness", "Z59.02", IN),
        ("homelessness", "Z59.1", OUT),
        ("homelessness", "Z59.811", OUT),
        ("incarceration", "Z65.1", IN),
        ("incarceration", "Z65.3", OUT),
        # Mental health: the subset of F01-F99 RULES.md describes
        ("mental_health", "F32.9", IN),
        ("mental_health", "F41.1", IN),
        ("mental_health", "F43.10", IN),
        ("mental_health", "F60.3", IN),
        ("mental_health", "F90.0", IN),
        ("mental_health", "F03.90", OUT),
        ("mental_health", "F10.20", OUT),
        ("mental_health", "F51.01", OUT),
        ("mental_health", "F70", OUT),
        ("mental_health", "F84.0", OUT),
        # ACSC: AHRQ PQI chronic composite
        ("acsc", "E11.65", IN),
        ("acsc", "E11.649", IN),
        ("acsc", "E10.10", IN),
        ("acsc", "E11.00", IN),
        ("acsc", "E11.22", IN),
        ("acsc", "E13.8", IN),
        ("acsc", "J44.1", IN),
        ("acsc", "J45.901", IN),
        ("acsc", "J43.9", IN),
        ("acsc", "I50.9", IN),
        ("acsc", "I50.23", IN),
        ("acsc", "I11.0", IN),
        ("acsc", "I09.81", IN),
        ("acsc", "I10", IN),
        ("acsc", "I12.9", IN),
        ("acsc", "I13.10", IN),
        ("acsc", "I16.1", IN),
        ("acsc", "E11.9", OUT),
        ("acsc", "E10.9", OUT),
        ("acsc", "I12.0", OUT),
        ("acsc", "I13.11", OUT),
        ("acsc", "J18.9", OUT),
        ("acsc", "N39.0", OUT),
    ],
)
def test_value_sets(value_set: str, code: str, member: bool) -> None:
    assert RULES.value_sets[value_set].matches(code) is member
    assert RULES.value_sets[value_set].matches(code.replace(".", "").lower()) is member


@pytest.mark.parametrize("category", ["F10", "F11", "F12", "F13", "F14", "F15", "F16", "F18", "F19"])
def test_every_remission_code_is_excluded(category: str) -> None:
    sud = RULES.value_sets["sud"]
    for suffix in ("11", "21", "91"):  # abuse, dependence, use: in remission
        assert not sud.matches(f"{category}.{suffix}")
    for suffix in ("10", "20", "90", "129", "229", "94"):
        assert sud.matches(f"{category}.{suffix}")


def test_synthetic_feed_codes() -> None:
    """The codes the synthetic feed sends fall where a reader of programs.md expects."""
    expected = {
        "F20.9": {"smi", "mental_health"},
        "F10.20": {"sud"},
        "T40.1X1A": {"overdose"},
        "Z59.00": {"homelessness"},
        "E11.9": set(),
        "J44.1": {"acsc"},
        "I10": {"acsc"},
        "R07.9": set(),
        "N39.0": set(),
        "F32.9": {"mental_health"},
    }
    for code, names in expected.items():
        assert {n for n, vs in RULES.value_sets.items() if vs.matches(code)} == names, code


def test_longest_lookback_covers_every_window() -> None:
    months = 120  # drug incarcerations, the longest window of the example
    assert RULES.longest_lookback().days >= 31 * months


# --- validation -------------------------------------------------------------------------------


def _broken(edit: Any) -> str:
    d = data()
    edit(d)
    return yaml.safe_dump(d)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["toc"].update(min_agee=18), "min_agee"),
        (lambda d: d.update(priority=["ISR", "TOC"]), "priority"),
        (lambda d: d.update(priority=["ISR", "TOC", "SUD-ENS", "TOC"]), "priority"),
        (lambda d: d["programs"].pop("ISR"), "priority"),
        (lambda d: d["value_sets"].pop("overdose"), "overdose"),
        (lambda d: d["value_sets"].pop("acsc"), "acsc"),
        (lambda d: d["toc"].update(admission_only_dx=["smi"]), "admission_only_dx"),
        (lambda d: d["site"].update(timezone="Mars/Olympus"), "timezone"),
        (lambda d: d["toc"]["inpatient_admissions"].update(min=0), "min"),
        (lambda d: d["isr"]["psych_admissions"].update(months=0), "months"),
        (lambda d: d["programs"]["TOC"].update(capacity=-1), "capacity"),
        (lambda d: d.update(candidate_max_age_hours=0), "candidate_max_age_hours"),
        (lambda d: d["site"]["facilities"]["STMARY"].update(kind="hospital"), "kind"),
        (lambda d: d.pop("version"), "version"),
    ],
)
def test_invalid_files_are_refused(edit: Any, message: str) -> None:
    with pytest.raises((ValidationError, ValueError), match=message):
        rules_from_text(_broken(edit))


def test_a_file_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="mapping"):
        rules_from_text("- just\n- a list\n")


def test_rules_are_immutable() -> None:
    with pytest.raises(ValidationError):
        setattr(RULES, "candidate_max_age_hours", 1)  # noqa: B010 - the frozen model must refuse
