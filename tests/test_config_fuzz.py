"""Property-based: random and malformed --set values either load or fail with a ConfigError naming the key."""

from hypothesis import given, settings
from hypothesis import strategies as st

from cmpl_ray.config import ConfigError, load_config  # noqa: I001

KEYS = sorted(load_config("demo").flat())
values = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "true",
            "false",
            "",
            "[]",
            "[1, 2]",
            "[a, b]",
            "{a: 1}",
            "null",
            "~",
            "- x",
            "1e-4",
            "nan",
            "inf",
            ":",
            "'",
            "[",
            "cross",
            "r50",
            "s3://b/p",
            "0x10",
        ]
    ),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=values)
def test_set_value_loads_or_names_the_key(key, value):
    try:
        cfg = load_config("demo", overrides=[f"{key}={value}"])
    except ConfigError as e:
        named = str(e).split(":")[0]
        assert named in KEYS, str(e)  # the message starts with a real key
        assert named == key or key in str(e) or key.split(".")[1] in str(e), str(e)  # cross-field: both named
    else:
        assert key in cfg.flat()


@settings(max_examples=150, deadline=None)
@given(item=st.text(max_size=30))
def test_malformed_override_strings_give_a_config_error(item):
    try:
        load_config("demo", overrides=[item])
    except ConfigError:
        pass
