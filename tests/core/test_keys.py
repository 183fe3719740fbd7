"""Cache keys: canonical encoding, binding, versions, and stability across processes."""

from __future__ import annotations

import dataclasses
import enum
import json
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercel.core.encoding.canonical import MAX_DEPTH, encode_arguments
from tiercel.core.encoding.functions import code_version, function_name
from tiercel.core.encoding.keys import KeyBuilder, digest, hash_tag
from tiercel.core.errors import KeyEncodingError

ROOT = Path(__file__).resolve().parents[2]


def build(a: Any, b: Any = 2, *, c: Any = None) -> Any:
    return (a, b, c)


def report(x: Any, y: Any = None, debug: bool = False) -> Any:
    return x


def collect(first: Any, *rest: Any, debug: bool = False, **options: Any) -> Any:
    return first


class Color(enum.Enum):
    RED = "red"
    BLUE = 1


class Size(enum.IntEnum):
    SMALL = 1


@dataclasses.dataclass(frozen=True)
class Window:
    start: int
    end: int
    label: str = dataclasses.field(default="", compare=False)


class Opaque:
    pass


def encode(value: Any) -> bytes:
    return encode_arguments({"v": value})


# -- stability ----------------------------------------------------------------------------

PINNED_INPUT: dict[str, Any] = {
    "n": 1,
    "f": 1.5,
    "t": True,
    "none": None,
    "s": "héllo",
    "b": b"\x00a",
    "l": [1, [2, "x"]],
    "d": {"z": 1, "a": [None]},
    "big": 2**100,
    "neg": -7,
}


def test_pinned_encoding_and_digest() -> None:
    # Changing the canonical encoding changes every key in every deployed cache: if this
    # fails on purpose, bump the "tiercel-key-N" prefix and say so in the CHANGELOG.
    encoded = encode_arguments(PINNED_INPUT)
    assert encoded == (
        b"d10:1:bb2:\x00a3:bigi10000000000000000000000000;1:dd2:1:al1:N1:zi1;"
        b"1:ff?\xf8\x00\x00\x00\x00\x00\x001:ll2:i1;l2:i2;s1:x1:ni1;3:negi-7;4:noneN"
        b"1:ss6:h\xc3\xa9llo1:tT"
    )
    assert digest(encoded) == "f7d6cd8e1ae431e34e1f9ce9012965ed"


def test_pinned_key() -> None:
    builder = KeyBuilder(build, namespace="tiercel", name="reports.build", version="v1")
    assert builder.key((1, "x"), {}) == (
        "tiercel:v:reports.build:v1:{093735533ebe8f6cdffc34dcbbbff912}"
    )


def test_key_is_stable_across_processes() -> None:
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tiercel.core.encoding.keys import KeyBuilder;"
        "from tests.core.test_keys import build, PINNED_INPUT;"
        "b = KeyBuilder(build, namespace='tiercel');"
        "print(b.key((PINNED_INPUT, {'x', 'y', 'z'}), {'c': frozenset({'p', 'q'})}));"
        "print(b.version)"
    )
    builder = KeyBuilder(build, namespace="tiercel")
    expected = [
        builder.key((PINNED_INPUT, {"x", "y", "z"}), {"c": frozenset({"p", "q"})}),
        builder.version,
    ]
    for seed in ("0", "1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", script, str(ROOT)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=ROOT,
        )
        assert result.stdout.split() == expected


def test_key_layout_and_hash_tag() -> None:
    builder = KeyBuilder(build, namespace="ns")
    key = builder.key((1,), {})
    assert key.startswith(f"ns:v:{function_name(build)}:{builder.version}:{{")
    tag = hash_tag(key)
    assert len(tag) == 32 and int(tag, 16) >= 0
    assert key.endswith("{" + tag + "}")


def test_hash_tag_follows_redis_rules() -> None:
    assert hash_tag("a:{tag}:b") == "tag"
    assert hash_tag("{a}{b}") == "a"
    assert hash_tag("no tag") == "no tag"
    assert hash_tag("empty{}tag") == "empty{}tag"
    assert hash_tag("open{only") == "open{only"
    assert hash_tag("x{{y}z}") == "{y"


def test_generation_changes_the_key() -> None:
    builder = KeyBuilder(build, namespace="ns")
    assert builder.key((1,), {}) != builder.key((1,), {}, generation=1)
    assert builder.key((1,), {}, generation=1) == builder.key((1,), {}, generation=1)


def test_namespace_name_and_version_separate_keys() -> None:
    keys = {
        KeyBuilder(build, namespace="a", name="f", version="1").key((1,), {}),
        KeyBuilder(build, namespace="b", name="f", version="1").key((1,), {}),
        KeyBuilder(build, namespace="a", name="g", version="1").key((1,), {}),
        KeyBuilder(build, namespace="a", name="f", version="2").key((1,), {}),
    }
    assert len(keys) == 4
    assert len({hash_tag(key) for key in keys}) == 4


# -- binding ------------------------------------------------------------------------------


def test_positional_keyword_and_default_are_one_key() -> None:
    builder = KeyBuilder(build, namespace="ns")
    expected = builder.key((1, 2), {})
    assert builder.key((1,), {}) == expected
    assert builder.key((1,), {"b": 2}) == expected
    assert builder.key((), {"a": 1, "b": 2}) == expected
    assert builder.key((), {"b": 2, "a": 1}) == expected
    assert builder.key((1, 2), {"c": None}) == expected
    assert builder.key((1, 3), {}) != expected


def test_fast_and_inspect_binding_agree() -> None:
    builder = KeyBuilder(report, namespace="ns")
    for args, kwargs in [((1,), {}), ((1, 2), {"debug": True}), ((), {"y": 2, "x": 1})]:
        bound = builder.bind(args, kwargs)
        slow = builder.signature.bind(*args, **kwargs)
        slow.apply_defaults()
        assert bound == dict(slow.arguments)
        out = encode_arguments(bound, where=builder.name)
        assert (
            builder.key(args, kwargs)
            == builder._key_prefix + "{" + digest(builder._prefix + b"i0;" + out) + "}"
        )


def test_kwargs_order_is_irrelevant() -> None:
    builder = KeyBuilder(collect, namespace="ns")
    assert builder.key((1, 2), {"b": 1, "a": 2}) == builder.key((1, 2), {"a": 2, "b": 1})
    assert builder.key((1, 2), {"a": 1}) != builder.key((1, 2), {"a": 2})
    assert builder.key((1, 2), {}) != builder.key((2, 1), {})


def test_binding_failures_are_type_errors() -> None:
    builder = KeyBuilder(build, namespace="ns")
    with pytest.raises(TypeError, match="too many positional"):
        builder.key((1, 2, 3), {})
    with pytest.raises(TypeError, match="multiple values"):
        builder.key((1,), {"a": 1})
    with pytest.raises(TypeError, match="unexpected keyword"):
        builder.key((1,), {"zzz": 1})
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        builder.key((), {})
    with pytest.raises(TypeError, match="unexpected keyword"):
        KeyBuilder(report, namespace="ns").key((1,), {"nope": 1})


def test_ignore_leaves_arguments_out() -> None:
    builder = KeyBuilder(report, namespace="ns", ignore=("debug",))
    assert builder.key((1,), {"debug": True}) == builder.key((1,), {"debug": False})
    assert builder.key((1, None, True), {}) == builder.key((1,), {})
    plain = KeyBuilder(report, namespace="ns")
    assert plain.key((1,), {"debug": True}) != plain.key((1,), {"debug": False})
    # an ignored argument may hold anything, it is never encoded
    builder.key((1,), {"debug": Opaque()})


def test_ignore_reaches_into_var_kwargs() -> None:
    builder = KeyBuilder(collect, namespace="ns", ignore=("debug", "trace"))
    assert builder.key((1,), {"trace": Opaque(), "x": 1}) == builder.key((1,), {"x": 1})
    assert builder.key((1,), {"debug": True}) == builder.key((1,), {})


def test_ignore_of_unknown_name_fails_early() -> None:
    with pytest.raises(ValueError, match="not parameters"):
        KeyBuilder(report, namespace="ns", ignore=("debgu",))


def test_bad_namespace_or_name_is_rejected() -> None:
    with pytest.raises(ValueError):
        KeyBuilder(build, namespace="a{b}")
    with pytest.raises(ValueError):
        KeyBuilder(build, namespace="ns", name="")
    with pytest.raises(ValueError):
        KeyBuilder(build, namespace="ns", version="has space")


# -- canonical encoding -------------------------------------------------------------------


def test_equal_values_of_different_types_are_distinct() -> None:
    assert len({encode(1), encode(1.0), encode(True)}) == 3
    assert len({encode(0), encode(0.0), encode(False), encode(None), encode("")}) == 5
    assert encode(b"a") != encode("a")
    assert encode(0.0) != encode(-0.0)
    assert encode(float("nan")) == encode(-float("nan"))
    assert encode([1]) != encode({1})
    assert encode(Size.SMALL) != encode(1)
    assert encode(Color.RED) != encode("red")
    assert encode(uuid.UUID(int=1)) != encode(str(uuid.UUID(int=1)))


def test_tuple_and_list_encode_alike() -> None:
    assert encode((1, (2, 3))) == encode([1, [2, 3]])


def test_containers_are_order_independent() -> None:
    assert encode({"a": 1, "b": 2}) == encode({"b": 2, "a": 1})
    assert encode({3, 1, 2}) == encode({2, 3, 1}) == encode(frozenset({1, 2, 3}))
    assert encode({"x", "y"}) != encode({"x", "z"})


def test_encoding_is_unambiguous() -> None:
    samples: list[Any] = [
        "ab",
        ["a", "b"],
        ["ab"],
        ["a", ["b"]],
        [["a"], "b"],
        {"a": "b"},
        {"ab": ""},
        b"ab",
        [b"a", b"b"],
        1,
        16,
        [1, 6],
        "1",
        [],
        [[]],
        {},
        [{}],
        [None],
        None,
        2**64,
        Decimal("1.0"),
        Decimal("1.00"),
        datetime(2024, 1, 1),
        date(2024, 1, 1),
        time(1, 2),
        datetime(2024, 1, 1, tzinfo=UTC),
        Window(1, 2),
        Color.BLUE,
        "\ud800",
    ]
    encodings = [encode(value) for value in samples]
    assert len(set(encodings)) == len(samples)


def test_supported_types_round_trip_stably() -> None:
    value = {
        "when": datetime(2024, 1, 2, 3, 4, 5),
        "day": date(2024, 1, 2),
        "at": time(5, 6),
        "price": Decimal("9.99"),
        "id": uuid.UUID("12345678123456781234567812345678"),
        "color": Color.RED,
        "size": Size.SMALL,
        "window": Window(1, 5, "label"),
        "tags": frozenset({"a", "b"}),
        "big": -(2**200),
        "surrogate": "\udcff",
    }
    assert encode(value) == encode(dict(reversed(list(value.items()))))
    assert encode(Window(1, 5, "label")) == encode(Window(1, 5, "other"))  # compare=False


def test_str_and_number_subclasses_encode_as_their_base() -> None:
    class Name(str):
        pass

    class Count(int):
        pass

    assert encode(Name("x")) == encode("x")
    assert encode(Count(3)) == encode(3)


def test_unencodable_argument_names_its_path() -> None:
    builder = KeyBuilder(build, namespace="ns", name="reports.build")
    with pytest.raises(KeyEncodingError) as info:
        builder.key(([0, 1, {"k": Opaque()}],), {})
    message = str(info.value)
    assert "argument 'a[2]['k']' of reports.build" in message
    assert "Opaque" in message
    assert "ignore=('a',)" in message
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        (object(), "v", "builtins.object"),
        ([1, lambda: 0], "v[1]", "function"),
        ({"a": {1: "int key"}}, "v['a']", "str keys"),
        ({1, 2, Opaque()}, "v{", "Opaque"),
        (Window(1, Opaque()), "v['end']", "Opaque"),  # type: ignore[arg-type]
        (1 + 2j, "v", "complex"),
        (memoryview(b"x"), "v", "memoryview"),
    ],
)
def test_unencodable_values(value: Any, path: str, fragment: str) -> None:
    with pytest.raises(KeyEncodingError, match=fragment) as info:
        encode_arguments({"v": value}, where="f")
    assert f"argument '{path}" in str(info.value)


def test_depth_is_bounded() -> None:
    shallow: Any = "leaf"
    for _ in range(MAX_DEPTH - 2):
        shallow = [shallow]
    encode(shallow)
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(KeyEncodingError, match="deeper than"):
        encode(deep)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(KeyEncodingError, match="deeper than"):
        encode(loop)


def test_size_is_bounded() -> None:
    with pytest.raises(KeyEncodingError, match="more than"):
        encode(["x" * 1_000_000] * 9)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, JSON_VALUES)
def test_json_round_trip_keeps_the_key(a: Any, b: Any) -> None:
    builder = KeyBuilder(build, namespace="ns")
    after = json.loads(json.dumps([a, b]))
    assert builder.key((a,), {"b": b}) == builder.key((after[0],), {"b": after[1]})


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES, JSON_VALUES)
def test_different_json_values_give_different_keys(a: Any, b: Any) -> None:
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert (encode(a) == encode(b)) == same


def test_kombu_json_round_trip_keeps_the_key() -> None:
    from kombu.utils.json import dumps, loads

    args = [
        datetime(2024, 1, 2, 3, 4),
        date(2024, 1, 2),
        Decimal("1.50"),
        uuid.UUID(int=7),
        b"raw",
        ("t", 1.0),
    ]
    assert encode(args) == encode(loads(dumps(args)))


# -- versions -----------------------------------------------------------------------------


def make(source: str, name: str = "f", **namespace: Any) -> Any:
    exec(compile(source, "<generated>", "exec"), namespace)
    return namespace[name]


def test_code_version_equal_for_identical_code() -> None:
    source = "def f(x):\n    return [y * 2 for y in range(x)]\n"
    assert code_version(make(source)) == code_version(make(source))
    assert code_version(make(source)) == code_version(make("\n\n\n" + source))  # line moves
    assert len(code_version(make(source))) == 16


@pytest.mark.parametrize(
    "changed",
    [
        "def f(x):\n    return [y * 3 for y in range(x)]\n",  # a constant
        "def f(x):\n    return [y + 2 for y in range(x)]\n",  # the bytecode
        "def f(x):\n    return [y * 2 for y in list(x)]\n",  # a name it calls
        "def f(z):\n    return [y * 2 for y in range(z)]\n",  # an argument name
        "def f(x=1):\n    return [y * 2 for y in range(x)]\n",  # a default
        "def f(x):\n    return [y * 2 for y in range(x) if y in {1, 2}]\n",
        "def f(x):\n    return [(lambda: y * 2)() for y in range(x)]\n",  # a nested function
    ],
)
def test_code_version_changes_with_the_code(changed: str) -> None:
    original = "def f(x):\n    return [y * 2 for y in range(x)]\n"
    assert code_version(make(original)) != code_version(make(changed))


def test_code_version_of_default_values() -> None:
    template = "def f(x={!r}, *, k={!r}):\n    return x\n"
    assert code_version(make(template.format(1, 2))) != code_version(make(template.format(1, 3)))
    assert code_version(make(template.format(1, 2))) != code_version(make(template.format(1.0, 2)))


def closure_over(value: Any) -> Any:
    def inner() -> Any:
        return value

    return inner


def test_code_version_follows_closure_values() -> None:
    assert code_version(closure_over(1)) == code_version(closure_over(1))
    assert code_version(closure_over(1)) != code_version(closure_over(2))
    assert code_version(closure_over("1")) != code_version(closure_over(1))
    # values that cannot be encoded contribute their type only
    assert code_version(closure_over(Opaque())) == code_version(closure_over(Opaque()))
    assert code_version(closure_over(Opaque())) != code_version(closure_over(object()))


def test_code_version_follows_wrapped_functions() -> None:
    def decorate(fn: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    one = decorate(make("def f():\n    return 1\n"))
    two = decorate(make("def f():\n    return 2\n"))
    assert code_version(one) != code_version(two)


def test_code_version_survives_recursive_closures() -> None:
    def outer() -> Any:
        def again(n: int) -> int:
            return again(n - 1) if n else 0

        return again

    assert code_version(outer()) == code_version(outer())


def test_code_version_of_a_bound_method() -> None:
    class Service:
        def run(self, x: int) -> int:
            return x

    assert code_version(Service().run) == code_version(Service.run)


def test_code_version_needs_a_python_function() -> None:
    with pytest.raises(TypeError, match="version="):
        code_version(len)
    with pytest.raises(TypeError, match="version="):
        KeyBuilder(len, namespace="ns")
    assert KeyBuilder(len, namespace="ns", version="1").key(([],), {})


def test_version_defaults_to_code_version_and_can_be_overridden() -> None:
    assert KeyBuilder(build, namespace="ns").version == code_version(build)
    pinned = KeyBuilder(build, namespace="ns", version="2024-06")
    assert pinned.version == "2024-06"
    assert pinned.key((1,), {}) != KeyBuilder(build, namespace="ns").key((1,), {})
    assert ":2024-06:" in pinned.key((1,), {})


def test_function_name() -> None:
    assert function_name(build) == "tests.core.test_keys.build"
    assert function_name(closure_over(1)) == "tests.core.test_keys.closure_over.<locals>.inner"
