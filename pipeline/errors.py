"""Errors a person fixes on the command line or in the config file (exit status 2)."""


class UsageError(Exception):
    """One line naming the option or config key at fault; main() prints it and exits 2."""
