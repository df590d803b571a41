"""The one error the local fleet raises: always says what went wrong and what to do."""


class FleetError(RuntimeError):
    """A local Triton server could not be installed, started or stopped."""
