"""Consent: Segment's consent model decides where an event may go, before anything is stored
or forwarded.

An event's categories are `context.consent.categoryPreferences` (`{"analytics": true}`).
The config maps the warehouse and each destination to the categories it needs; a target
gets the event only when every one of its categories is true. Following Segment's routing
table (docs: "Reconcile consent object and integrations object conflicts"):

- no consent object (or one without `categoryPreferences`): the configured default,
  `missing_consent: allow` (Segment's behaviour: no enforcement) or `deny` (treated like an
  empty `categoryPreferences`);
- an empty `categoryPreferences` means every category is false; a category the config
  names but the event does not is false; categories the config does not name are ignored;
- a target mapped to no category is not subject to consent;
- consent is evaluated first; then the `integrations` object narrows forwarding only
  (`{"All": false, "Webhook": true}`: a destination's own key wins over `All`; `false`
  disables, `true` or an options object enables; absent means `All`, itself true by default).

A malformed consent object (not an object, a non-boolean preference) is a dead letter
`invalid_consent`: not stored, not forwarded, replayable.
"""
from collections import Counter
from typing import NamedTuple, Optional, Union

import apache_beam as beam

from transforms import metrics
from transforms.fallible import FallibleFn, apply_fallible
from transforms.messages import Event, Rejection

MISSING_POLICIES = ("allow", "deny")


class ConsentSettings(NamedTuple):
    """The config's `consent` section."""
    missing_consent: str = "allow"
    warehouse: tuple = ()        # categories the warehouse needs
    destinations: tuple = ()     # ((destination name, (categories, ...)), ...)


class Route(NamedTuple):
    store: bool                  # may the warehouse store it
    destinations: tuple          # destinations it may be forwarded to
    denied_by_consent: tuple     # destinations consent kept it from
    denied_by_integrations: tuple  # destinations the integrations object kept it from
    consent_present: bool


def read_preferences(body: dict) -> Union[Optional[dict], Rejection]:
    """The event's categoryPreferences; None when it has no consent object; a Rejection when
    the consent object is malformed. JSON null counts as absent, as elsewhere in the spec."""
    context = body.get("context")
    consent = context.get("consent") if type(context) is dict else None
    if consent is None:
        return None
    if type(consent) is not dict:
        return Rejection("invalid_consent", "context.consent must be an object",
                         {"pointer": "/context/consent", "found": type(consent).__name__})
    preferences = consent.get("categoryPreferences")
    if preferences is None:
        return None
    if type(preferences) is not dict:
        return Rejection("invalid_consent", "context.consent.categoryPreferences must be an object of booleans",
                         {"pointer": "/context/consent/categoryPreferences", "found": type(preferences).__name__})
    for category, value in preferences.items():
        if type(value) is not bool:
            return Rejection("invalid_consent",
                             f"consent category {category[:60]!r} must be true or false, "
                             f"got {type(value).__name__}",
                             {"pointer": "/context/consent/categoryPreferences/"
                                         + category.replace("~", "~0").replace("/", "~1"),
                              "found": type(value).__name__})
    return preferences


def consented(preferences: Optional[dict], required: tuple, missing_consent: str) -> bool:
    """Whether a target needing `required` categories may have the event."""
    if not required:
        return True
    if preferences is None:
        return missing_consent == "allow"
    return all(preferences.get(category) is True for category in required)


def integration_enabled(integrations, destination: str) -> bool:
    """Segment's integrations object, for one destination (keys are case-sensitive)."""
    if not integrations or type(integrations) is not dict:
        return True
    value = integrations.get(destination, integrations.get("All", True))
    return value is not False


def route(body: dict, settings: ConsentSettings) -> Union[Route, Rejection]:
    preferences = read_preferences(body)
    if isinstance(preferences, Rejection):
        return preferences
    store = consented(preferences, settings.warehouse, settings.missing_consent)
    allowed, by_consent, by_integrations = [], [], []
    integrations = body.get("integrations")
    for name, categories in settings.destinations:
        if not consented(preferences, categories, settings.missing_consent):
            by_consent.append(name)
        elif not integration_enabled(integrations, name):
            by_integrations.append(name)
        else:
            allowed.append(name)
    return Route(store, tuple(allowed), tuple(by_consent), tuple(by_integrations), preferences is not None)


class _CounterNames(dict):
    """destination name -> its counter name, built once per name."""

    def __init__(self, reason: str):
        super().__init__()
        self._reason = reason

    def __missing__(self, name):
        value = self[name] = f"destination.{name}.dropped_{self._reason}"
        return value


_DENIED_BY_CONSENT = _CounterNames("consent")
_DENIED_BY_INTEGRATIONS = _CounterNames("integrations")


class ApplyConsentFn(FallibleFn):
    STAGE = "consent"

    def __init__(self, settings: Optional[ConsentSettings]):
        self._settings = settings  # None: no consent section in the config, nothing to check
        self._counts = None

    def start_bundle(self):
        self._counts = Counter()  # per-event counters are summed here, flushed once a bundle

    def attempt(self, event: Event):
        if self._settings is None:
            yield event
            return
        decision = route(event.body, self._settings)
        if isinstance(decision, Rejection):
            yield self.dead_letter(decision, event, event.body.get("messageId"))
            return
        counts = self._counts
        counts["consent.present" if decision.consent_present else "consent.missing"] += 1
        for name in decision.denied_by_consent:
            counts[_DENIED_BY_CONSENT[name]] += 1
        for name in decision.denied_by_integrations:
            counts[_DENIED_BY_INTEGRATIONS[name]] += 1
        if not decision.store and not decision.destinations:
            counts["dropped.consent"] += 1  # goes nowhere: not even the transformations see it
            return
        if decision.store is event.store and decision.destinations == event.destinations:
            yield event
        else:
            yield event._replace(store=decision.store, destinations=decision.destinations)

    def finish_bundle(self):
        for name, value in self._counts.items():
            metrics.inc(name, value)


class ApplyConsent(beam.PTransform):
    """Event -> Event marked with where it may go (main output `events`), `dead_letters`."""

    def __init__(self, settings: Optional[ConsentSettings] = None):
        super().__init__()
        self._settings = settings

    def expand(self, events):
        return apply_fallible(events, ApplyConsentFn(self._settings))
