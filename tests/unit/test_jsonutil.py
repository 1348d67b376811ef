import pytest
from hypothesis import given, strategies as st

from transforms import jsonutil


def test_big_integers_stay_exact():
    value = jsonutil.loads(b'{"id": 123456789012345678901234567890}')
    assert value["id"] == 123456789012345678901234567890
    assert jsonutil.dumps(value) == b'{"id":123456789012345678901234567890}'


@pytest.mark.parametrize("payload", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}', b'{"a": "\\ud800"}',
                                     b'\xff{"a":1}', b"[" * 5000 + b"]" * 5000, b'{"a": 1,}', b""])
def test_invalid_json_is_refused(payload):
    with pytest.raises(jsonutil.JSONError):
        jsonutil.loads(payload)


@pytest.mark.parametrize("payload", [b'{"a": NaN, "b": 12345678901234567890123}', b'{"n": 1e999, "b": 12345678901234567890123}',
                                     b'{"s": "\\udc00", "b": 12345678901234567890123}'])
def test_slow_path_is_as_strict_as_the_fast_path(payload):
    with pytest.raises(jsonutil.JSONError):
        jsonutil.loads(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@given(json_values)
def test_round_trip_is_lossless(value):
    assert jsonutil.loads(jsonutil.dumps(value)) == value
