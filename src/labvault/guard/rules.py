"""Anomaly rules: what raises an alert without (by itself) stopping the reader.

Each rule has a default threshold a lab may override in its guard settings
(``labvault guard config --tenant ID --set rule.enumeration.10m=30``). The table in
docs/guard.md mirrors ``RULES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str          # alert kind
    setting: str       # per-lab override key
    default: int       # threshold (count within the 10-minute window), 0 = every time
    severity: str
    what: str


RULES: dict[str, Rule] = {r.kind: r for r in (
    Rule("budget.exceeded", "budget.<role>.10m / .day", 0, "critical",
         "distinct patients read over the role's budget: read refused, account suspended"),
    Rule("canary.read", "-", 0, "critical", "a honeytoken patient was opened"),
    Rule("canary.search", "-", 0, "critical", "a search returned a honeytoken patient"),
    Rule("canary.export", "-", 0, "critical", "a honeytoken patient was exported"),
    Rule("canary.leaked", "-", 0, "critical",
         "a honeytoken patient is in a leaked file being triaged (breach case): the leak "
         "comes from this lab's data"),
    Rule("enumeration.patients", "rule.enumeration.10m", 40, "high",
         "many distinct patients opened within 10 minutes (below the budget)"),
    Rule("enumeration.searches", "rule.search_fanout.10m", 60, "high",
         "many searches within 10 minutes (search fan-out)"),
    Rule("enumeration.misses", "rule.index_misses.10m", 20, "high",
         "many searches that matched nobody within 10 minutes (identifier probing)"),
    Rule("access.denied.repeated", "rule.denials.10m", 5, "high",
         "repeated refusals by the policy within 10 minutes"),
    Rule("access.off_hours", "hours.open / hours.close / hours.days", 0, "medium",
         "patient data opened outside the lab's opening hours"),
    Rule("access.new_client", "-", 0, "medium",
         "an account reads from a client address it never used before"),
    Rule("break-glass", "-", 0, "high",
         "break-glass (emergency) access used (raised by the gate itself)"),
    Rule("retention.mass_erasure", "-", 0, "critical",
         "the scheduled purge would crypto-shred more of the lab's patients than one run "
         "may: nothing erased until `labvault purge --confirm-mass-erasure N`"),
)}


def threshold(rule_kind: str, config: Mapping[str, str]) -> int:
    r = RULES[rule_kind]
    return int(config.get(r.setting, r.default))


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_HOURS = {"hours.open": "07:00", "hours.close": "20:00", "hours.days": "mon-sat",
                 "hours.tz": "Europe/Paris"}


def _days(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.lower().split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            i, j = _DAYS.index(a.strip()), _DAYS.index(b.strip())
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part:
            out.add(_DAYS.index(part))
    return out


@dataclass(frozen=True, slots=True)
class OpeningHours:
    open: time
    close: time
    days: frozenset[int]
    tz: ZoneInfo

    @staticmethod
    def from_config(config: Mapping[str, str]) -> OpeningHours:
        def get(k: str) -> str:
            return config.get(k, DEFAULT_HOURS[k])
        return OpeningHours(time.fromisoformat(get("hours.open")),
                            time.fromisoformat(get("hours.close")),
                            frozenset(_days(get("hours.days"))), ZoneInfo(get("hours.tz")))

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(self.tz)
        return local.weekday() in self.days and self.open <= local.time() < self.close
