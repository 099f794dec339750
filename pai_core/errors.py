"""Errors raised by pai_core. Each names the offending input and what was expected."""


class PaiError(Exception):
    """Base class of every error pai_core raises on purpose."""


class InputError(PaiError, ValueError):
    """An observation does not match what the policy expects (camera, image size, state length)."""


class ModelError(PaiError):
    """A model (policy, SAE, OOD parameters) cannot be loaded or does not fit the others."""
