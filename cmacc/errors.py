"""Errors that mean the user's input is wrong: the CLI prints them and exits 2, no traceback."""


class InputError(Exception):
    """A configuration key, manifest line or data file is wrong; the message names it."""
