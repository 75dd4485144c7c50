"""Errors meant for the user: one line each, with the fix where there is one."""

from __future__ import annotations


class Sc2Error(Exception):
    """A failure the user can act on; the CLI prints its message as one line and exits with `exit_code`."""

    exit_code = 1


class InputError(Sc2Error):
    """Bad input: a wrong option, file, cursor or model folder."""

    exit_code = 2


class CheckpointError(InputError):
    """A model folder or weight file that is not a usable StarCoder2 checkpoint."""
