import grpc
import pytest

from gateway.errors import ModelNotFoundError
from gateway.routing.table import RouteTable


def _table() -> RouteTable[str]:
    return RouteTable.build(
        {
            "a": frozenset({("classifier", "1"), ("classifier", "2"), ("simple", "1")}),
            "b": frozenset({("classifier", "1"), ("simple", "1")}),
            "c": frozenset({("classifier", "10")}),
        }
    )


def test_versioned_key_lists_every_backend_with_that_version_ready() -> None:
    assert _table().lookup("classifier", "1") == ("a", "b")
    assert _table().lookup("simple", "1") == ("a", "b")


def test_latest_is_the_newest_version_every_holder_has_in_numeric_order() -> None:
    # Version 10 is newer than 2, though "10" < "2" as text.
    table = RouteTable.build(
        {
            "a": frozenset({("classifier", "2"), ("classifier", "10")}),
            "b": frozenset({("classifier", "2"), ("classifier", "10"), ("simple", "1")}),
        }
    )
    assert table.latest_version == {"classifier": "10", "simple": "1"}
    assert table.lookup("classifier", "") == ("a", "b")
    assert table.lookup("simple", "") == ("b",)


def test_latest_stays_on_the_old_version_while_a_new_one_is_on_some_backends_only() -> None:
    # A rollout half-way: version 2 is on "a" only; unversioned requests keep one version,
    # the one every backend has.
    table = RouteTable.build(
        {
            "a": frozenset({("classifier", "1"), ("classifier", "2")}),
            "b": frozenset({("classifier", "1")}),
        }
    )
    assert table.latest_version["classifier"] == "1"
    assert table.lookup("classifier", "") == ("a", "b")
    # "a" would answer an unversioned request with its own newest version, 2: name 1.
    assert table.name_version == {"classifier": "1"}
    assert table.lookup("classifier", "2") == ("a",)


def test_without_a_version_on_every_holder_latest_is_the_most_held_then_the_older() -> None:
    table = _table()  # classifier 1 on a and b, 2 on a, 10 on c
    assert table.latest_version["classifier"] == "1"
    assert table.lookup("classifier", "") == ("a", "b")
    one_each = RouteTable.build(
        {"a": frozenset({("classifier", "2")}), "b": frozenset({("classifier", "1")})}
    )
    assert one_each.latest_version["classifier"] == "1"
    assert one_each.lookup("classifier", "") == ("b",)


def test_unknown_model_uses_tritons_wording() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        _table().lookup("nope", "")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == "Request for unknown model: 'nope' is not found"


def test_unknown_version_uses_tritons_wording() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        _table().lookup("classifier", "3")
    assert info.value.message == "Request for unknown model: 'classifier' version 3 is not found"


def test_backends_with_model_spans_versions() -> None:
    assert set(_table().backends_with_model("classifier")) == {"a", "b", "c"}
    assert _table().backends_with_model("nope") == ()


def test_empty_table_knows_no_model() -> None:
    table: RouteTable[str] = RouteTable.build({})
    assert table.latest_version == {}
    with pytest.raises(ModelNotFoundError):
        table.lookup("simple", "1")


def test_unversioned_requests_name_the_latest_where_triton_would_answer_a_newer_one() -> None:
    # Triton answers an unversioned request with its own newest version: where a backend of
    # the route holds (or is being given) a newer one, the requests name the latest.
    ready = {
        "a": frozenset({("classifier", "2"), ("classifier", "3")}),
        "b": frozenset({("classifier", "2")}),
    }
    pinned = RouteTable.build(ready, pinned_latest={"classifier": "2"})
    assert pinned.latest_version["classifier"] == "2"
    assert pinned.lookup("classifier", "") == ("a", "b")
    assert pinned.name_version == {"classifier": "2"}
    assert pinned.lookup("classifier", "3") == ("a",)
    loading = RouteTable.build(
        {"a": frozenset({("classifier", "2")}), "b": frozenset({("classifier", "2")})},
        present={
            "a": frozenset({("classifier", "2"), ("classifier", "3")}),
            "b": frozenset({("classifier", "2")}),
        },
    )
    assert loading.lookup("classifier", "") == ("a", "b")
    assert loading.name_version == {"classifier": "2"}
    settled = RouteTable.build({"a": frozenset({("classifier", "3")})})
    assert settled.name_version == {}
