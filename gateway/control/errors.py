"""Why the control plane could not start or keep its data plane: one base, one line each."""


class ControlError(RuntimeError):
    """The gateway cannot serve: the message says what to change."""
