"""Who qualifies for which program: a pure function of a person's history, a trigger and the rules.

`evaluate` reads no clock, no database and no broker: the caller hands it the person's
history (`PersonHistory`), what happened (`Trigger`), the rules file (`Rules`) and `now`.
It returns an `Evaluation`: one `Decision` per program the trigger concerns, each with
every criterion (met or not) and its evidence (encounter and flag ids), then the program
to propose by `rules.priority`, and a reason in plain words without PHI.
The program rules are `/work/shared/docs/programs.md`; `RULES.md` says how every criterion
reads the rules file.

Triggers (`trigger_for`), from the HL7 v2 trigger event and the encounter as folded so far
(`history.fold`; "inpatient" = kind ``inpatient`` or ``psych_inpatient``)::

    event              encounter                    trigger      at
    any                status cancelled             none         -
    A11, A12, A13      any                          none         - (a cancel re-evaluates nothing)
    any but A03        status preadmit              none         - (A05: not admitted yet)
    A03                any                          discharge    encounter.end (else event time)
    A01, A04, A05, A06 inpatient                    admission    encounter.start
    A01, A04, A05, A06 ED / sobering / outpatient   visit        encounter.start
    A02, A07, A08      discharged                   discharge    encounter.end (else event time)
    A02, A07, A08      inpatient                    admission    the event time (else encounter.start)
    A02, A07, A08      ED / sobering / outpatient   visit        the event time (else encounter.start)
    others (A09, A31)  any                          none         -

A re-evaluation (A02, A07, A08 of an open encounter) counts back from the event's own
time, not from the admission: a diagnosis added on day 5 of a stay may make the patient
eligible while still in the bed, and "only current events make candidates" must judge
that update by when it happened. A flag from a partner system triggers at the time it
was received (`flag_trigger`), not at its `effective` date, which may be years back.

Which programs a trigger concerns (programs.md): TOC an admission or discharge of an
inpatient encounter (the facility's participation is a criterion, so an admission
elsewhere still explains itself); ISR an admission or discharge of a psychiatric
inpatient encounter; SUD-ENS every trigger.

Criterion names: a plain name ("medi_cal", "inpatient_admissions_6m>=3") is required;
"any_of" is met when one of its options "any_of/<option>" is; the advisory names in
`ADVISORY` ("county_residence_unknown", "birth_date_unknown") record an unknown fact that
does not block. `is_blocking` tells them apart; `Decision.eligible` is "every blocking
criterion met".
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from enrollment_svc.model import (
    Criterion,
    Decision,
    EncounterFacts,
    EncounterKind,
    Evaluation,
    Flag,
    FlagKind,
    PersonHistory,
    Trigger,
)
from enrollment_svc.rules import Rules, Window
from schemas.adt_event import AdtEventV1

__all__ = [
    "ADVISORY",
    "county_resident",
    "evaluate",
    "flag_trigger",
    "is_blocking",
    "is_medi_cal",
    "months_before",
    "trigger_for",
]

ADVISORY: Final = frozenset({"county_residence_unknown", "birth_date_unknown"})
OPTION_PREFIX: Final = "any_of/"

# "3 or more inpatient admissions (medical or psychiatric)" (programs.md, TOC).
ADMISSION_KINDS: Final[frozenset[EncounterKind]] = frozenset({"inpatient", "psych_inpatient"})
_CANCELS: Final = frozenset({"A11", "A12", "A13"})
_OPENS: Final = frozenset({"A01", "A04", "A05", "A06"})
_UPDATES: Final = frozenset({"A02", "A07", "A08"})
# A cancelled encounter never happened; a pre-admission has not happened yet.
_COUNTED_STATUSES: Final = frozenset({"active", "discharged"})

# Partner-system flags of a state that say the same as a diagnosis value set (programs.md,
# SUD-ENS: facts "arrive as referrals or flags from partner systems"). SMI is a mental health
# disorder. Event flags (overdose, incarceration) are read by the criteria that name them.
_FLAGS_FOR_DX: Final[dict[str, tuple[FlagKind, ...]]] = {
    "homelessness": ("homelessness",),
    "sud": ("sud",),
    "smi": ("smi",),
    "mental_health": ("smi",),
}
_DRUG_USE: Final = "drug_use"  # the detail of an incarceration flag that involved drug use (model.Flag)


def is_blocking(criterion: Criterion) -> bool:
    """Whether an unmet `criterion` makes its program ineligible (options and advisories do not)."""
    return not criterion.name.startswith(OPTION_PREFIX) and criterion.name not in ADVISORY


def months_before(t: dt.datetime, n: int) -> dt.datetime:
    """``t`` moved ``n`` calendar months back, the day clamped to the month's length.

    31 August − 6 months is 28 (or 29) February; the wall-clock time and the zone stay.
    """
    index = t.year * 12 + (t.month - 1) - n
    year, month = divmod(index, 12)
    month += 1
    return t.replace(year=year, month=month, day=min(t.day, calendar.monthrange(year, month)[1]))


# --- triggers ---------------------------------------------------------------------------


def trigger_for(
    trigger_event: str, encounter: EncounterFacts, *, event_time: dt.datetime | None = None
) -> Trigger | None:
    """The trigger an ADT event makes, or None (the table in the module docstring).

    ``event_time`` (EVN-2, aware UTC) anchors re-evaluations (A02, A07, A08) of an open
    encounter; without it they count back from the encounter's start. The facility's
    participation is not decided here: only TOC asks for it, and `evaluate` records it
    as a criterion.
    """
    if encounter.status == "cancelled" or trigger_event in _CANCELS:
        return None
    if trigger_event == "A03" or (trigger_event in _UPDATES and encounter.status == "discharged"):
        return Trigger(kind="discharge", at=encounter.end or event_time or encounter.start, encounter=encounter)
    if encounter.status == "preadmit":
        return None
    kind: Literal["admission", "visit"] = "admission" if encounter.kind in ADMISSION_KINDS else "visit"
    if trigger_event in _OPENS:
        return Trigger(kind=kind, at=encounter.start, encounter=encounter)
    if trigger_event in _UPDATES:
        at = max(encounter.start, event_time) if event_time is not None else encounter.start
        return Trigger(kind=kind, at=at, encounter=encounter)
    return None


def flag_trigger(flag: Flag, received_at: dt.datetime) -> Trigger:
    """The trigger a new partner-system flag makes: windows count back from when it arrived."""
    return Trigger(kind="flag", at=received_at, flag=flag)


# --- person facts from one ADT event ------------------------------------------------------


def _fold(value: str) -> str:
    return value.strip().casefold()


def is_medi_cal(event: AdtEventV1, rules: Rules) -> bool | None:
    """Whether the event shows Medi-Cal coverage (programs.md: IN1 plan / company, PV1-20).

    True on a Medi-Cal id in PID-3 (type MA or a Medi-Cal authority), an IN1-2 plan or IN1-3
    company listed in ``site.medi_cal_plan_ids``, or a PV1-20 listed in
    ``site.medi_cal_financial_classes``. False when the event lists insurance (IN1) and none
    of it is Medi-Cal. None when it lists none: many events (A02, A03) carry no IN1 and must
    not erase what an earlier event said. An unlisted PV1-20 proves nothing either way: the
    values are local to each hospital ("MC" is Medicare at some, Medi-Cal at others).
    """
    if event.patient.medi_cal_id:
        return True
    site = rules.site
    plans = {_fold(p) for p in site.medi_cal_plan_ids}
    classes = {_fold(c) for c in site.medi_cal_financial_classes}
    said = False
    for insurance in event.insurance:
        for value in (insurance.plan_id, insurance.company_id):
            if value and value.strip():
                said = True
                if _fold(value) in plans:
                    return True
    financial_class = event.visit.financial_class if event.visit is not None else None
    if financial_class and _fold(financial_class) in classes:
        return True
    return False if said else None


def county_resident(event: AdtEventV1, rules: Rules) -> bool | None:
    """Whether PID-11 places the patient in the county; None when the address does not say.

    The county code (XAD-9) decides when present; else the ZIP (XAD-5, first five digits)
    against ``site.county_zip_prefixes``. No address, no county code and no usable ZIP (a
    homeless patient's address is often blank or "HOMELESS") is None, not False.
    """
    address = event.patient.address
    if address is None:
        return None
    site = rules.site
    if address.county_code and address.county_code.strip():
        return _fold(address.county_code) in {_fold(c) for c in site.county_codes}
    digits = "".join(ch for ch in (address.zip or "") if ch.isdigit())[:5]
    if len(digits) == 5 and site.county_zip_prefixes:
        return digits.startswith(tuple(p.strip() for p in site.county_zip_prefixes))
    return None


# --- evaluation ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _frozen(items: tuple[str, ...]) -> frozenset[str]:
    return frozenset(items)


def _set_of(items: Iterable[str]) -> frozenset[str]:
    """``items`` as a set, made once per distinct tuple of the rules (the criteria ask often)."""
    if isinstance(items, frozenset):
        return items
    if isinstance(items, tuple):
        return _frozen(items)
    return frozenset(items)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every criterion reads: the counted history as of the trigger time."""

    history: PersonHistory
    trigger: Trigger
    rules: Rules
    local_at: dt.datetime  # trigger.at in the site's zone: calendar months are local months
    encounters: tuple[EncounterFacts, ...]  # happened (not cancelled / pre-admitted), started by `at`
    flags: tuple[Flag, ...]  # effective by `at`

    # Windows already worked out, by months: the criteria ask for the same few windows again
    # and again (a dozen times per evaluation), and calendar arithmetic is not free.
    windows: dict[int, dt.datetime] = field(default_factory=dict, compare=False, repr=False)

    def since(self, months: int) -> dt.datetime:
        # "In the last N months": N calendar months back from the trigger, the start included.
        start = self.windows.get(months)
        if start is None:
            start = self.windows[months] = months_before(self.local_at, months)
        return start

    def encounters_in(
        self, months: int, kinds: Iterable[str] | None = None, dx: Iterable[str] | None = None
    ) -> list[EncounterFacts]:
        since = self.since(months)
        kind_set = _set_of(kinds) if kinds is not None else None
        dx_set = _set_of(dx) if dx is not None else None
        # One loop per combination, the likeliest miss tested first: most encounters carry no
        # value set at all (the empty-set test is cheap), and a kind is cheaper to test than a time.
        encounters = self.encounters
        if dx_set is None:
            if kind_set is None:
                return [e for e in encounters if since <= e.start]
            return [e for e in encounters if e.kind in kind_set and since <= e.start]
        if kind_set is None:
            return [e for e in encounters if e.dx_flags and not dx_set.isdisjoint(e.dx_flags) and since <= e.start]
        return [
            e
            for e in encounters
            if e.dx_flags and e.kind in kind_set and not dx_set.isdisjoint(e.dx_flags) and since <= e.start
        ]

    def point_flags(self, months: int, kinds: Iterable[str], detail: str | None = None) -> list[Flag]:
        """Flags of events (an admission, a referral, an overdose) that happened in the window."""
        since = self.since(months)
        kind_set = _set_of(kinds)
        return [
            f
            for f in self.flags
            if f.kind in kind_set and since <= f.effective and (detail is None or f.detail == detail)
        ]

    def state_flags(self, months: int, kinds: Iterable[str]) -> list[Flag]:
        """Flags of states (homeless, in foster care, has SUD) true at some time in the window.

        No ``until`` means still true (model.Flag), so it overlaps any window it started before.
        """
        since = self.since(months)
        kind_set = _set_of(kinds)
        return [f for f in self.flags if f.kind in kind_set and (f.until is None or f.until >= since)]


def _ids(items: Sequence[EncounterFacts | Flag]) -> tuple[str, ...]:
    """Evidence ids in time order (then id), whatever order the history came in."""
    when = {i.id: (i.start if isinstance(i, EncounterFacts) else i.effective) for i in items}
    return tuple(sorted(when, key=lambda item_id: (when[item_id], item_id)))


def _count(name: str, items: Sequence[EncounterFacts | Flag], window: Window) -> Criterion:
    found = len({i.id for i in items})
    return Criterion(
        name=name, met=found >= window.min, evidence=_ids(items), detail=f"{found} found, {window.min} needed"
    )


def _present(name: str, items: Sequence[EncounterFacts | Flag]) -> Criterion:
    found = len({i.id for i in items})
    return Criterion(name=name, met=found > 0, evidence=_ids(items), detail=f"{found} found")


def _any_of(options: Sequence[Criterion]) -> list[Criterion]:
    met = [c for c in options if c.met]
    evidence: dict[str, None] = {}
    for c in met:
        evidence.update(dict.fromkeys(c.evidence))
    detail = (
        "met: " + ", ".join(c.name.removeprefix(OPTION_PREFIX) for c in met) if met else f"none of {len(options)} met"
    )
    return [Criterion(name="any_of", met=bool(met), evidence=tuple(evidence), detail=detail), *options]


def _dx_or_flag(ctx: _Context, dx: str, months: int, kinds: Iterable[str] | None = None) -> list[EncounterFacts | Flag]:
    """Encounters carrying value set ``dx`` in the window, and the flags that say the same."""
    found: list[EncounterFacts | Flag] = list(ctx.encounters_in(months, kinds=kinds, dx=(dx,)))
    found.extend(ctx.state_flags(months, _FLAGS_FOR_DX.get(dx, ())))
    return found


def _common(ctx: _Context, min_age: int) -> list[Criterion]:
    """Medi-Cal membership, county residence and the program's minimum age (programs.md, common)."""
    history, rules = ctx.history, ctx.rules
    criteria = [
        Criterion(
            name="medi_cal",
            met=history.medi_cal is True,
            detail="" if history.medi_cal is True else "no Medi-Cal coverage seen",
        )
    ]
    if history.county_resident is None:
        if rules.require_known_residence:
            criteria.append(Criterion(name="county_resident", met=False, detail="address gives no county or ZIP"))
        else:
            # Addresses are often blank in ADT, above all for homeless patients, whom every program
            # wants: an unknown residence is recorded for the care team to confirm, not a reason to drop.
            criteria.append(
                Criterion(
                    name="county_residence_unknown",
                    met=False,
                    detail="advisory: address gives no county or ZIP; confirm at outreach",
                )
            )
    else:
        criteria.append(
            Criterion(
                name="county_resident",
                met=history.county_resident,
                detail="" if history.county_resident else "address outside the county",
            )
        )
    name = f"age>={min_age}"
    if min_age == 0:
        criteria.append(Criterion(name=name, met=True, detail="no minimum age"))
    elif history.birth_date is None:
        if rules.require_known_birth_date:
            criteria.append(Criterion(name=name, met=False, detail="birth date unknown"))
        else:
            criteria.append(
                Criterion(
                    name="birth_date_unknown", met=False, detail="advisory: birth date unknown; confirm age at outreach"
                )
            )
    else:
        today = ctx.local_at.date()
        born = history.birth_date
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        criteria.append(
            Criterion(name=name, met=age >= min_age, detail="" if age >= min_age else "under the minimum age")
        )
    return criteria


def _toc(ctx: _Context) -> Decision:
    """Transitions of Care (programs.md, TOC)."""
    toc = ctx.rules.toc
    encounter = ctx.trigger.encounter
    assert encounter is not None  # TOC is only concerned by an encounter trigger
    facility = ctx.rules.site.facilities.get(encounter.facility)
    if facility is None:
        where, ok = "facility not in the registry", False
    elif not facility.participating:
        where, ok = "facility not participating", False
    elif facility.kind not in toc.trigger_facility_kinds:
        where, ok = f"facility kind {facility.kind}", False
    else:
        where, ok = "", True
    criteria = _common(ctx, toc.min_age)
    criteria.append(
        Criterion(name="participating_facility", met=ok, evidence=(encounter.id,) if ok else (), detail=where)
    )
    window = toc.inpatient_admissions
    criteria.append(
        _count(
            f"inpatient_admissions_{window.months}m>={window.min}",
            ctx.encounters_in(window.months, kinds=ADMISSION_KINDS),
            window,
        )
    )
    options = []
    for dx in toc.any_of_dx:
        if dx in toc.admission_only_dx:
            found = _dx_or_flag(ctx, dx, toc.dx_lookback_months, kinds=ADMISSION_KINDS)
            options.append(_present(f"{OPTION_PREFIX}{dx}_admission_{toc.dx_lookback_months}m", found))
        else:
            options.append(
                _present(f"{OPTION_PREFIX}{dx}_{toc.dx_lookback_months}m", _dx_or_flag(ctx, dx, toc.dx_lookback_months))
            )
    months = toc.incarceration_lookback_months
    since = ctx.since(months)
    # Incarcerated at some time in the window: started in it, or released in it. An incarceration
    # flag without `until` is read as a point event, not as "still in custody" (a missing release
    # date must not make an old incarceration recent forever).
    jailed: list[EncounterFacts | Flag] = [
        f
        for f in ctx.flags
        if f.kind == "incarceration" and (f.effective >= since or (f.until is not None and f.until >= since))
    ]
    jailed.extend(ctx.encounters_in(months, dx=("incarceration",)))
    options.append(_present(f"{OPTION_PREFIX}incarceration_{months}m", jailed))
    criteria.extend(_any_of(options))
    return _decision("TOC", criteria)


def _isr(ctx: _Context) -> Decision:
    """Intensive Service Recipient (programs.md, ISR)."""
    isr = ctx.rules.isr
    encounter = ctx.trigger.encounter
    assert encounter is not None
    criteria = _common(ctx, isr.min_age)
    criteria.append(
        Criterion(
            name="psychiatric_inpatient_trigger",
            met=encounter.kind == "psych_inpatient",
            evidence=(encounter.id,) if encounter.kind == "psych_inpatient" else (),
        )
    )
    months = isr.dx_lookback_months
    criteria.append(_present(f"smi_{months}m", _dx_or_flag(ctx, "smi", months)))
    criteria.append(_present(f"sud_{months}m", _dx_or_flag(ctx, "sud", months)))
    window = isr.psych_admissions
    criteria.append(
        _count(
            f"psych_admissions_{window.months}m>={window.min}",
            ctx.encounters_in(window.months, kinds=("psych_inpatient",)),
            window,
        )
    )
    return _decision("ISR", criteria)


def _sud_ens(ctx: _Context) -> Decision:
    """SUD Engagement, Navigation and Support (programs.md, SUD-ENS); youth included."""
    sud = ctx.rules.sud_ens
    related = sud.sud_related_dx
    criteria = _common(ctx, sud.min_age)
    months = sud.active_sud_lookback_months
    criteria.append(_present(f"active_sud_{months}m", _dx_or_flag(ctx, "sud", months)))

    def counted(label: str, window: Window, items: Sequence[EncounterFacts | Flag]) -> Criterion:
        return _count(f"{OPTION_PREFIX}{label}_{window.months}m>={window.min}", items, window)

    w = sud.sud_ed_visits
    options = [counted("sud_ed_visits", w, ctx.encounters_in(w.months, kinds=("ed",), dx=related))]
    w = sud.sud_inpatient_admissions
    options.append(
        counted("sud_inpatient_admissions", w, ctx.encounters_in(w.months, kinds=ADMISSION_KINDS, dx=related))
    )
    w = sud.sobering_visits
    options.append(counted("sobering_visits", w, ctx.encounters_in(w.months, kinds=("sobering",))))
    m = sud.homelessness_lookback_months
    options.append(_present(f"{OPTION_PREFIX}homelessness_{m}m", _dx_or_flag(ctx, "homelessness", m)))
    m = sud.foster_care_lookback_months
    options.append(_present(f"{OPTION_PREFIX}foster_care_{m}m", ctx.state_flags(m, ("foster_care",))))
    w = sud.residential_sud_admissions
    options.append(counted("residential_sud_admissions", w, ctx.point_flags(w.months, ("residential_sud_admission",))))
    w = sud.drug_incarcerations
    options.append(counted("drug_incarcerations", w, ctx.point_flags(w.months, ("incarceration",), detail=_DRUG_USE)))
    m = sud.drug_court_lookback_months
    options.append(_present(f"{OPTION_PREFIX}drug_court_referral_{m}m", ctx.point_flags(m, ("drug_court_referral",))))
    m = sud.overdose_lookback_months
    overdoses: list[EncounterFacts | Flag] = list(ctx.encounters_in(m, dx=("overdose",)))
    overdoses.extend(ctx.point_flags(m, ("overdose",)))
    options.append(_present(f"{OPTION_PREFIX}overdose_{m}m", overdoses))
    criteria.extend(_any_of(options))
    return _decision("SUD-ENS", criteria)


def _decision(program: str, criteria: list[Criterion]) -> Decision:
    return Decision(
        program=program,
        eligible=all(c.met for c in criteria if is_blocking(c)),
        criteria=tuple(criteria),
    )


def _unmet(decision: Decision) -> str:
    return ", ".join(c.name for c in decision.criteria if is_blocking(c) and not c.met)


def _other_enrollment(flags: Iterable[Flag], now: dt.datetime) -> Flag | None:
    """An enrollment in another county program in effect now (programs.md, "No duplication")."""
    for f in sorted(flags, key=lambda f: (f.effective, f.id)):
        if f.kind == "other_program_enrollment" and f.effective <= now and (f.until is None or f.until > now):
            return f
    return None


def evaluate(history: PersonHistory, trigger: Trigger, rules: Rules, now: dt.datetime) -> Evaluation:
    """Decide, for each program the trigger concerns, whether the person qualifies, and what to propose.

    All times aware. The trigger's own encounter (or flag) counts even when the history
    loaded before it was stored lacks it; it replaces a stale copy with the same id.
    """
    encounters = {e.id: e for e in history.encounters}
    if trigger.encounter is not None:
        encounters[trigger.encounter.id] = trigger.encounter
    all_flags = {f.id: f for f in history.flags}
    if trigger.flag is not None:
        all_flags[trigger.flag.id] = trigger.flag
    at = trigger.at
    ctx = _Context(
        history=history,
        trigger=trigger,
        rules=rules,
        local_at=at.astimezone(rules.site.zone()),
        # Late history is welcome, but an encounter that starts after the trigger (or a flag
        # that takes effect after it) is not part of the past the windows look at.
        encounters=tuple(e for e in encounters.values() if e.status in _COUNTED_STATUSES and e.start <= at),
        flags=tuple(f for f in all_flags.values() if f.effective <= at),
    )

    encounter = trigger.encounter
    inpatient = (
        trigger.kind in ("admission", "discharge") and encounter is not None and encounter.kind in ADMISSION_KINDS
    )
    builders: dict[str, Callable[[_Context], Decision]] = {"SUD-ENS": _sud_ens}
    if inpatient:
        builders["TOC"] = _toc
        if encounter is not None and encounter.kind == "psych_inpatient":
            builders["ISR"] = _isr
    decisions = tuple(builders[p](ctx) for p in rules.priority if p in builders)
    eligible = [d for d in decisions if d.eligible]

    def blocked(why: str) -> Evaluation:
        if eligible:
            why = f"eligible for {', '.join(d.program for d in eligible)}, but {why}"
        return Evaluation(rule_version=rules.rule_version, decisions=decisions, proposed=None, reason=why)

    limit = dt.timedelta(hours=rules.candidate_max_age_hours)
    if encounter is not None and encounter.status == "cancelled":
        return blocked("the triggering encounter was cancelled")
    if now - at > limit or (encounter is not None and encounter.end is not None and now - encounter.end > limit):
        return blocked(
            f"the trigger is more than {rules.candidate_max_age_hours} h old: only current events make candidates"
        )
    if history.active_program is not None:
        return blocked(f"an active {history.active_program} candidacy or enrollment exists (no duplication)")
    if _other_enrollment(all_flags.values(), now) is not None:
        return blocked("enrolled in another county care-coordination program (no duplication)")
    if not eligible:
        unmet = "; ".join(f"{d.program} lacks {_unmet(d)}" for d in decisions)
        return Evaluation(
            rule_version=rules.rule_version, decisions=decisions, proposed=None, reason=f"no program qualifies: {unmet}"
        )
    chosen = eligible[0]
    reason = f"{chosen.program}: every criterion met"
    if len(eligible) > 1:
        others = ", ".join(d.program for d in eligible[1:])
        reason += f"; also eligible for {others}, {chosen.program} comes first by priority"
    evidence: dict[str, None] = {}
    for c in chosen.criteria:
        if c.met and c.name not in ADVISORY:
            evidence.update(dict.fromkeys(c.evidence))
    return Evaluation(
        rule_version=rules.rule_version,
        decisions=decisions,
        proposed=chosen.program,
        reason=reason,
        evidence=tuple(evidence),
    )
