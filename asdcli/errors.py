"""Errors that reach the user as one line and exit code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix. The CLI exits with code 2."""


class ConfigError(UserError):
    """A recipe or override that does not validate (key path, allowed values, fix)."""
