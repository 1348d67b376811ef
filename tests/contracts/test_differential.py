"""The compiled validator (jsonschema-rs) and the reference (jsonschema) agree on valid /
invalid, over the sample contracts and the tests' own, on hypothesis-generated events and
on the Segment documentation's examples."""
import jsonschema_rs
import referencing
from hypothesis import given, settings, strategies as st

from tests.conftest import ROOT
from tests.contracts.helpers import ALIAS, COMMON, ORDER
from transforms.contracts.lint import check_directory, validator_class

CONTRACTS, _ = check_directory(str(ROOT / "samples" / "contracts"))
SCHEMAS = [c.schema for c in CONTRACTS] + [ORDER, COMMON, ALIAS]
PAIRS = [(jsonschema_rs.validator_for(s, validate_formats=False, offline=True),
          validator_class(s)(s, registry=referencing.Registry())) for s in SCHEMAS]


def _property_names(node, out):
    if isinstance(node, dict):
        for key, value in (node.get("properties") or {}).items():
            out.add(key)
            _property_names(value, out)
        _property_names(node.get("items"), out)
    return out


NAMES = sorted(set().union(*(_property_names(s, set()) for s in SCHEMAS)))
leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
                 st.sampled_from(["EUR", "hd", "free", "anon-1", "2026-01-01T00:00:00Z", ""]))
key = st.one_of(st.sampled_from(NAMES), st.text(max_size=5))
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key, inner, max_size=4),
                     max_leaves=10)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "group", "page", "screen", "alias"]),
     "messageId": st.text(min_size=1, max_size=4)},
    optional={"event": st.sampled_from(["Order Completed", "Video Played", "x"]),
              "userId": st.one_of(st.text(max_size=4), st.integers()),
              "previousId": leaf, "properties": st.dictionaries(key, value, max_size=6),
              "traits": st.dictionaries(key, value, max_size=6), "context": st.dictionaries(key, value, max_size=4)})


def agree(event):
    for fast, reference in PAIRS:
        assert fast.is_valid(event) == reference.is_valid(event), (reference.schema, event)


@settings(max_examples=400, deadline=None)
@given(events)
def test_validators_agree_on_generated_events(event):
    agree(event)


def test_validators_agree_on_the_segment_examples(segment_examples):
    for example in segment_examples:
        agree(example)


def test_the_corpus_has_both_outcomes(segment_examples):
    """Guard against a vacuous agreement: some events pass and some fail."""
    outcomes = {reference.is_valid(e) for e in segment_examples for _, reference in PAIRS}
    assert outcomes == {True, False}
