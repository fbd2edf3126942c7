"""The program rules as data: a versioned YAML file program staff edit without a release.

The format is documented in `enrollment_svc/RULES.md`, with the county pilot's complete
example in `deploy/rules/wpc-rules.yaml`; `wpc up` reads the file named by
``WPC_RULES_FILE``. Every decision records ``version`` (the file's own version) and a
digest of the file's content, so two files with the same version but different
content are told apart.

Policy numbers (windows, thresholds, ages, capacities, expiry) and code lists live
here and nowhere else (style.md: "every number of policy is configuration").
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.enrollment import PROGRAMS
from services import icd10
from services.configfile import ConfigError, YamlDocument, parse_yaml, read_yaml, validate

__all__ = ["Rules", "load_rules", "rules_from_text"]



class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _icd10(code: str) -> str:
    # A look-alike typo (F2l for F21) would match no diagnosis at all, silently.
    if (problem := icd10.problem(code)) is not None:
        raise ValueError(problem)
    return code


Icd10Code = Annotated[str, AfterValidator(_icd10)]


class ValueSet(_Strict):
    """ICD-10-CM codes by prefix: a code belongs when it starts with an ``include`` prefix and
    with no ``exclude`` prefix. Codes are compared upper case without the dot (F10.21 → F1021)."""

    description: str = ""
    include: tuple[Icd10Code, ...]
    exclude: tuple[Icd10Code, ...] = ()

    @field_validator("include", "exclude", mode="after")
    @classmethod
    def _canonical(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(canonical_code(c) for c in codes)

    def matches(self, code: str) -> bool:
        c = canonical_code(code)
        return c.startswith(self.include) and not (self.exclude and c.startswith(self.exclude))


def canonical_code(code: str) -> str:
    return icd10.canonical(code)


class Facility(_Strict):
    """One facility of the registry, keyed by its MSH-4 (or PV1-3.4) id."""

    name: str = ""
    kind: Literal["general_acute", "psychiatric", "sobering_center", "other"] = "general_acute"
    participating: bool = False  # in the pilot and on the county HIE (TOC counts admissions here)
    part2: bool = False  # a 42 CFR Part 2 program (notifier: SUD detail needs consent)


class Site(_Strict):
    """Facts about the county's systems, not program policy."""

    county_fips: str = "06037"
    county_codes: tuple[str, ...] = ("06037", "037")  # PID-11.9 values meaning this county
    county_zip_prefixes: tuple[str, ...] = ()  # PID-11.5 prefixes inside the county (when no county code)
    timezone: str = "America/Los_Angeles"  # how naive HL7 times are read
    facilities: dict[str, Facility] = {}
    psychiatric_services: tuple[str, ...] = ()  # PV1-10 values of psychiatric inpatient services
    psychiatric_units: tuple[str, ...] = ()  # PV1-3.1 points of care that are psychiatric units
    medi_cal_plan_ids: tuple[str, ...] = ()  # IN1-2 / IN1-3 values meaning Medi-Cal (plans and the state)
    medi_cal_financial_classes: tuple[str, ...] = ()  # PV1-20 values meaning Medi-Cal
    # An event time (EVN-2 / MSH-7) further than this after the message's receipt is a feed finding
    # (`enrollment_svc.findings`): the sender's clock or time zone is wrong. The event is still used.
    clock_ahead_margin_minutes: int = Field(default=15, ge=0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:  # a KeyError, which pydantic would not report
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Window(_Strict):
    """A count of something within a window: at least ``min`` in the last ``months``."""

    months: int = Field(gt=0)
    min: int = Field(ge=1)


class TocRules(_Strict):
    min_age: int = Field(default=18, ge=0)
    # "admitted to a participating general acute care hospital" (programs.md, TOC): the kinds of
    # facility (in `site.facilities`, with participating: true) whose admissions trigger TOC.
    trigger_facility_kinds: tuple[Literal["general_acute", "psychiatric", "sobering_center", "other"], ...] = (
        "general_acute",
    )
    inpatient_admissions: Window = Window(months=6, min=3)  # medical or psychiatric; the current one counts
    # At least one of these, each a diagnosis value set found in the history window (or a flag):
    any_of_dx: tuple[str, ...] = ("acsc", "homelessness", "sud", "mental_health")
    # Those of `any_of_dx` that count only on an inpatient admission ("1+ avoidable admission
    # related to a chronic medical problem"), not on an ED or clinic visit.
    admission_only_dx: tuple[str, ...] = ("acsc",)
    dx_lookback_months: int = Field(default=12, gt=0)
    incarceration_lookback_months: int = Field(default=1, gt=0)


class IsrRules(_Strict):
    min_age: int = Field(default=18, ge=0)
    psych_admissions: Window = Window(months=12, min=6)  # the current one counts
    dx_lookback_months: int = Field(default=24, gt=0)  # SMI and SUD diagnoses are looked for this far back


class SudEnsRules(_Strict):
    min_age: int = Field(default=0, ge=0)  # youth included
    active_sud_lookback_months: int = Field(default=12, gt=0)
    # Value sets that make an ED visit or an admission "related to SUD" / "with co-occurring SUD".
    sud_related_dx: tuple[str, ...] = ("sud", "overdose")
    sud_ed_visits: Window = Window(months=12, min=3)
    sud_inpatient_admissions: Window = Window(months=12, min=2)
    sobering_visits: Window = Window(months=12, min=3)
    residential_sud_admissions: Window = Window(months=12, min=3)  # "more than 2"
    drug_incarcerations: Window = Window(months=120, min=2)
    overdose_lookback_months: int = Field(default=24, gt=0)
    drug_court_lookback_months: int = Field(default=12, gt=0)
    homelessness_lookback_months: int = Field(default=12, gt=0)
    foster_care_lookback_months: int = Field(default=12, gt=0)


class Program(_Strict):
    capacity: int = Field(ge=0)  # slots: pending + accepted + enrolled candidates
    pending_expiry_days: int = Field(default=14, gt=0)  # a proposal never acted on expires
    usual_duration_days: int = Field(default=30, gt=0)  # for disenrollment review (programs.md)
    # A 42 CFR Part 2 program: its care team sees SUD information without the patient's consent
    # (services.part2; the notification file's `part2_qualified` says the same of its team).
    part2: bool = False


class Rules(_Strict):
    version: str
    description: str = ""
    site: Site = Site()
    value_sets: dict[str, ValueSet]
    priority: tuple[str, ...] = ("ISR", "TOC", "SUD-ENS")  # proposed first when several are met
    candidate_max_age_hours: int = Field(
        default=72, gt=0, description="An encounter (or event) that ended longer ago makes no candidate"
    )
    # What an unknown address / birth date means (RULES.md, "Unknown facts"): by default an
    # advisory criterion that does not block; true makes the unknown fact block the proposal.
    require_known_residence: bool = False
    require_known_birth_date: bool = False
    programs: dict[str, Program]
    toc: TocRules = TocRules()
    isr: IsrRules = IsrRules()
    sud_ens: SudEnsRules = SudEnsRules()
    digest: str = ""  # sha256 of the file's text, filled by `rules_from_text`

    @model_validator(mode="after")
    def _consistent(self) -> Rules:
        unknown = set(self.priority) - set(PROGRAMS)
        if unknown or set(self.priority) != set(self.programs) or len(self.priority) != len(PROGRAMS):
            # "<key>: " first: the loader reports the line of that key (services.configfile).
            raise ValueError(f"priority: priority and programs must both list exactly {', '.join(PROGRAMS)}")
        needed = {
            "smi",
            "sud",
            "overdose",
            "homelessness",
            "incarceration",
            *self.toc.any_of_dx,
            *self.sud_ens.sud_related_dx,
        }
        missing = needed - set(self.value_sets)
        if missing:
            raise ValueError(f"value_sets: lacks {', '.join(sorted(missing))} (named by the program rules)")
        stray = set(self.toc.admission_only_dx) - set(self.toc.any_of_dx)
        if stray:
            raise ValueError(f"toc.admission_only_dx: names sets not in toc.any_of_dx: {', '.join(sorted(stray))}")
        return self

    def part2_programs(self) -> frozenset[str]:
        """The programs marked ``part2``: their care teams are Part 2 qualified (services.part2)."""
        return frozenset(name for name, spec in self.programs.items() if spec.part2)

    @property
    def rule_version(self) -> str:
        """What a decision records: the version and the first 12 hex digits of the digest."""
        return f"{self.version}+{self.digest[:12]}" if self.digest else self.version

    def longest_lookback(self) -> dt.timedelta:
        """How far back eligibility ever looks: the history to load for one person."""
        months = max(
            self.toc.inpatient_admissions.months,
            self.toc.dx_lookback_months,
            self.isr.psych_admissions.months,
            self.isr.dx_lookback_months,
            self.sud_ens.active_sud_lookback_months,
            self.sud_ens.sud_ed_visits.months,
            self.sud_ens.sud_inpatient_admissions.months,
            self.sud_ens.sobering_visits.months,
            self.sud_ens.residential_sud_admissions.months,
            self.sud_ens.drug_incarcerations.months,
            self.sud_ens.overdose_lookback_months,
            self.sud_ens.drug_court_lookback_months,
            self.sud_ens.homelessness_lookback_months,
            self.sud_ens.foster_care_lookback_months,
            self.toc.incarceration_lookback_months,
        )
        # A calendar month is at most 31 days, so this covers `eligibility.months_before` for any
        # anchor; flags still in effect (no `until`) are needed whatever their start (RULES.md).
        return dt.timedelta(days=31 * months)


_HINT = "set WPC_RULES_FILE to a rules file (format: enrollment_svc/RULES.md, example: deploy/rules/wpc-rules.yaml)"


def rules_from_text(text: str, source: str = "rules file") -> Rules:
    """The rules in ``text``; a mistake raises `ConfigError` naming ``source`` and the line."""
    return _rules_of(parse_yaml(text, source))


def load_rules(path: Path, *, setting: str | None = None) -> Rules:
    """The rules file at ``path`` (chosen by the variable ``setting``, for messages)."""
    return _rules_of(read_yaml(path, setting=setting, hint=_HINT))


def _rules_of(doc: YamlDocument) -> Rules:
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{doc.label}: the rules file must be a YAML mapping (see enrollment_svc/RULES.md)")
    digest = hashlib.sha256(doc.text.encode()).hexdigest()
    return validate(doc, Rules, {**doc.data, "digest": digest})
