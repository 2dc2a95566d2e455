"""Errors that end a command with exit code 2 and one readable line."""


class NtlabError(Exception):
    """A problem with the user's input or data: say what was wrong and how to fix it."""


class UnknownNameError(NtlabError):
    """A name that is not in a registry."""


class NonFiniteError(NtlabError):
    """A training produced a non-finite loss or parameters (it diverged)."""
