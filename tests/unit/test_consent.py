"""Consent routing, case by case from Segment's documented table ("Reconcile consent object
and integrations object conflicts"), plus Sluice's own rules for the warehouse, the missing
consent default and malformed consent objects."""
import pytest

from transforms import consent
from transforms.consent import ConsentSettings, Route
from transforms.messages import Rejection

# The docs' examples: ad = facebook, google-ads; analytics = amplitude (and facebook in the
# multi-category rows). Destination names are the integrations object's keys.
AD_ONLY = ConsentSettings(destinations=(("amplitude", ()), ("facebook", ("ad",)), ("google-ads", ("ad",))))
AD_AND_ANALYTICS = ConsentSettings(destinations=(("amplitude", ("analytics",)), ("facebook", ("ad",)),
                                                 ("google-ads", ("ad",))))
MULTI = ConsentSettings(destinations=(("amplitude", ("analytics",)), ("facebook", ("ad", "analytics")),
                                      ("google-ads", ("ad",))))
UNMAPPED = ConsentSettings(destinations=(("amplitude", ()), ("facebook", ()), ("google-ads", ())))
FB_TRUE_AMP_FALSE = {"facebook": True, "amplitude": False}


def event(preferences=..., consent_object=..., integrations=None):
    context = {"ip": "203.0.113.1"}
    if consent_object is not ...:
        context["consent"] = consent_object
    elif preferences is not ...:
        context["consent"] = {"categoryPreferences": preferences}
    body = {"type": "track", "event": "Order Completed", "userId": "u1", "context": context}
    if integrations is not None:
        body["integrations"] = integrations
    return body


def forwarded(body, settings) -> set:
    decision = consent.route(body, settings)
    assert isinstance(decision, Route), decision
    return set(decision.destinations)


# Segment's table, row by row.
SEGMENT_TABLE = [
    # no consent object, no integrations object: every destination
    ("no consent, no integrations", event(), MULTI, {"amplitude", "facebook", "google-ads"}),
    ("empty consent object", event(consent_object={}), MULTI, {"amplitude", "facebook", "google-ads"}),
    # empty categoryPreferences: false for every category; unmapped destinations still flow
    ("empty preferences", event({}), AD_ONLY, {"amplitude"}),
    # no consent, integrations {facebook: true, amplitude: false}: amplitude is off; google-ads,
    # absent from the object, follows All (true by default)
    ("no consent, integrations", event(integrations=FB_TRUE_AMP_FALSE), AD_ONLY, {"facebook", "google-ads"}),
    # empty preferences with integrations: mapped destinations are off whatever integrations say
    ("empty preferences, integrations", event({}, integrations=FB_TRUE_AMP_FALSE), AD_ONLY, set()),
    # preferences for categories nothing is mapped to: all destinations are unmapped
    ("unmapped categories", event({"ad": True, "analytics": False}), UNMAPPED,
     {"amplitude", "facebook", "google-ads"}),
    ("unmapped categories, integrations", event({"ad": True, "analytics": False}, integrations=FB_TRUE_AMP_FALSE),
     UNMAPPED, {"facebook", "google-ads"}),
    # ad true, analytics false: ad destinations only
    ("ad only", event({"ad": True, "analytics": False}), AD_AND_ANALYTICS, {"facebook", "google-ads"}),
    # ... and google-ads still flows though the integrations object does not name it
    ("ad only, integrations", event({"ad": True, "analytics": False}, integrations=FB_TRUE_AMP_FALSE),
     AD_AND_ANALYTICS, {"facebook", "google-ads"}),
    # integrations false for facebook narrows it out
    ("ad only, facebook off", event({"ad": True, "analytics": False},
                                    integrations={"facebook": False, "amplitude": False}),
     AD_AND_ANALYTICS, {"google-ads"}),
    # facebook needs ad AND analytics
    ("multi, analytics false", event({"ad": True, "analytics": False}, integrations=FB_TRUE_AMP_FALSE),
     MULTI, {"google-ads"}),
    ("multi, both true", event({"ad": True, "analytics": True}, integrations=FB_TRUE_AMP_FALSE),
     MULTI, {"facebook", "google-ads"}),
    ("multi, ad false", event({"ad": False, "analytics": True}, integrations=FB_TRUE_AMP_FALSE), MULTI, set()),
]


@pytest.mark.parametrize("body, settings, expected", [row[1:] for row in SEGMENT_TABLE],
                         ids=[row[0] for row in SEGMENT_TABLE])
def test_segment_routing_table(body, settings, expected):
    assert forwarded(body, settings) == expected


def test_consent_and_integrations_are_counted_apart():
    decision = consent.route(event({"ad": False, "analytics": True}, integrations=FB_TRUE_AMP_FALSE), MULTI)
    assert decision.denied_by_consent == ("facebook", "google-ads")
    assert decision.denied_by_integrations == ("amplitude",)


def test_integrations_all_false_enables_only_named_destinations():
    body = event(integrations={"All": False, "google-ads": True, "facebook": {"pixelId": "123"}})
    assert forwarded(body, UNMAPPED) == {"google-ads", "facebook"}  # options objects enable
    assert forwarded(event(integrations={"All": False}), UNMAPPED) == set()
    assert forwarded(event(integrations={"Facebook": False}), UNMAPPED) == {"amplitude", "facebook", "google-ads"}


WAREHOUSE = ConsentSettings(warehouse=("analytics",))


@pytest.mark.parametrize("body, settings, stored", [
    (event({"analytics": True}), WAREHOUSE, True),
    (event({"analytics": False}), WAREHOUSE, False),
    (event({}), WAREHOUSE, False),                                      # empty: every category false
    (event({"advertising": True}), WAREHOUSE, False),                   # a category it lacks is false
    (event(), WAREHOUSE, True),                                         # missing consent: allow
    (event(), WAREHOUSE._replace(missing_consent="deny"), False),
    (event(consent_object={}), WAREHOUSE._replace(missing_consent="deny"), False),
    (event(consent_object=None), WAREHOUSE, True),                      # null is absent
    (event({"analytics": True, "ads": True}), ConsentSettings(warehouse=("analytics", "ads")), True),
    (event({"analytics": True, "ads": False}), ConsentSettings(warehouse=("analytics", "ads")), False),
    (event({}), ConsentSettings(), True),                               # warehouse needs nothing
    (event(), ConsentSettings(missing_consent="deny"), True),
    (event({"analytics": True}, integrations={"All": False}), WAREHOUSE, True),  # integrations: forwarding only
])
def test_warehouse_consent(body, settings, stored):
    assert consent.route(body, settings).store is stored


def test_category_ids_are_case_sensitive():
    assert consent.route(event({"Analytics": True}), WAREHOUSE).store is False


@pytest.mark.parametrize("consent_object, pointer", [
    ("yes", "/context/consent"),
    (["analytics"], "/context/consent"),
    ({"categoryPreferences": ["analytics"]}, "/context/consent/categoryPreferences"),
    ({"categoryPreferences": {"analytics": "true"}}, "/context/consent/categoryPreferences/analytics"),
    ({"categoryPreferences": {"analytics": 1}}, "/context/consent/categoryPreferences/analytics"),
    ({"categoryPreferences": {"a/b": None}}, "/context/consent/categoryPreferences/a~1b"),
])
def test_malformed_consent_is_rejected_with_its_pointer(consent_object, pointer):
    decision = consent.route(event(consent_object=consent_object), WAREHOUSE)
    assert isinstance(decision, Rejection)
    assert decision.error_type == "invalid_consent"
    assert decision.details["pointer"] == pointer
    assert "\n" not in decision.message


def test_consent_on_the_segment_examples(segment_examples):
    """Every documentation example routes (none carries consent): stored under allow, and
    under deny only where the warehouse needs no category."""
    for body in segment_examples:
        assert consent.route(body, WAREHOUSE).store is True
        assert consent.route(body, WAREHOUSE._replace(missing_consent="deny")).store is False
