"""The settings of the whole system, for the commands that deal with more than one service
(`wpc up`, `wpc check-config`): each service's own settings, built once, side by side.

A wrong value of a shared setting (WPC_LOG_LEVEL) is wrong for every service; it is
reported once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from adt_listener.settings import ListenerSettings
from enrollment_svc.settings import EnrollmentSettings
from notifier.settings import NotifierSettings
from services.configfile import ConfigError
from services.settings import PREFIX, ServiceSettings, load_settings
from webapp.settings import WebSettings

SERVICE_SETTINGS: tuple[type[ServiceSettings], ...] = (ListenerSettings, EnrollmentSettings, NotifierSettings,
                                                       WebSettings)


@dataclass(frozen=True)
class SystemSettings:
    listener: ListenerSettings
    enrollment: EnrollmentSettings
    notifier: NotifierSettings
    web: WebSettings

    @property
    def services(self) -> tuple[ServiceSettings, ...]:
        return (self.listener, self.enrollment, self.notifier, self.web)

    @property
    def shared(self) -> ServiceSettings:
        """The settings all services share (the same values in each: one environment)."""
        return self.listener

    @classmethod
    def of(cls, **values: object) -> SystemSettings:
        """Each service's settings from ``values`` (each takes its own fields; the environment
        fills the rest). A name no service reads is refused, not ignored."""
        unknown = set(values) - {name for model in SERVICE_SETTINGS for name in model.model_fields}
        if unknown:
            raise TypeError(f"not a setting of any service: {', '.join(sorted(unknown))}")

        def own(model: type[ServiceSettings]) -> dict[str, Any]:
            return {k: v for k, v in values.items() if k in model.model_fields}

        return cls(ListenerSettings(**own(ListenerSettings)), EnrollmentSettings(**own(EnrollmentSettings)),
                   NotifierSettings(**own(NotifierSettings)), WebSettings(**own(WebSettings)))

    def updated(self, **values: object) -> SystemSettings:
        """Each service's settings with these shared ``values`` (the embedded servers' URLs)."""
        return replace(
            self,
            listener=self.listener.model_copy(update=values),
            enrollment=self.enrollment.model_copy(update=values),
            notifier=self.notifier.model_copy(update=values),
            web=self.web.model_copy(update=values),
        )


def load_system(overrides: Mapping[str, object] | None = None, *, flags: Mapping[str, str] | None = None
                ) -> SystemSettings:
    """Every service's settings; `ConfigError` with every wrong value, each named once."""
    problems: list[str] = []
    built: list[ServiceSettings] = []
    for model in SERVICE_SETTINGS:
        try:
            built.append(load_settings(model, overrides, flags=flags))
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(problems)
    listener, enrollment, notifier, web = built
    assert isinstance(listener, ListenerSettings)
    assert isinstance(enrollment, EnrollmentSettings)
    assert isinstance(notifier, NotifierSettings)
    assert isinstance(web, WebSettings)
    return SystemSettings(listener, enrollment, notifier, web)


def setting_names() -> frozenset[str]:
    """Every ``WPC_`` variable some service reads."""
    return frozenset(f"{PREFIX}{name.upper()}" for model in SERVICE_SETTINGS for name in model.model_fields)
