"""Version strings read as Triton 2.51 reads them (std::stol), checked against a real server."""

import grpc
import pytest

from gateway.errors import GatewayError
from gateway.routing.versions import canonical_version

STOL = "(details: stol), version should be an integral value > 0"


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("", ""), ("1", "1"), ("12", "12"), ("01", "1"), (" 1", "1"), ("+1", "1"), ("1x", "1"),
     ("1.5", "1"), ("0", "0"), ("-0", "0"), ("9999999999", "9999999999")],
)  # fmt: skip
def test_versions_triton_accepts(given: str, canonical: str) -> None:
    assert canonical_version(given) == canonical


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("x", f"failed to get model version from specified version string 'x' {STOL}"),
        ("99999999999999999999",
         f"failed to get model version from specified version string '99999999999999999999' "
         f"{STOL}"),
        ("\u0661", f"failed to get model version from specified version string '\u0661' {STOL}"),
        ("-1", "invalid model version specified '-1' , version should be an integral value > 0"),
    ],
)  # fmt: skip
def test_versions_triton_refuses(given: str, message: str) -> None:
    with pytest.raises(GatewayError) as info:
        canonical_version(given)
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)
