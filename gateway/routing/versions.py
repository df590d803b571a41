"""Model version strings read as Triton reads them, so the gateway answers in Triton's words.

Triton parses ``model_version`` with C++ ``std::stol`` before it looks the model up: leading
white space, a sign and trailing junk are accepted ("01", " 1", "1x" all mean version 1), a
string with no leading number or out of int64's range is INVALID_ARGUMENT, a negative number is
INVALID_ARGUMENT too. The canonical form (the number in decimal) is what routes, balancer keys and
metric labels use, so invented spellings of one version never make new entries.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidRequestError

_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INT64_MAX = 2**63 - 1
_FAST_DIGITS = 18  # any 18-digit number fits int64


def canonical_version(version: str) -> str:
    """ "" (latest) or the version as a decimal number; InvalidRequestError in Triton's words."""
    if not version or (
        len(version) <= _FAST_DIGITS
        and version.isascii()
        and version.isdigit()
        and version[0] != "0"
    ):
        return version
    match = _NUMBER.match(version)
    number = int(match.group(1)) if match is not None else None
    if number is None or not -_INT64_MAX - 1 <= number <= _INT64_MAX:
        raise InvalidRequestError(
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0"
        )
    if number < 0:
        raise InvalidRequestError(
            f"invalid model version specified '{version}' , version should be an integral value > 0"
        )
    return str(number)
