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


def test_unversioned_key_goes_only_to_backends_with_the_latest_version() -> None:
    # Numeric order: version 10 is newer than 2, though "10" < "2" as text.
    table = _table()
    assert table.latest_version["classifier"] == "10"
    assert table.lookup("classifier", "") == ("c",)
    assert table.lookup("simple", "") == ("a", "b")


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
