"""Errors a person fixes on the command line or in the config file (exit status 2)."""
import argparse


class UsageError(Exception):
    """One line naming the option or config key at fault; main() prints it and exits 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse would print its usage and exit; every command here wants one line instead (the
    job's options, serve's and experiments': a UsageError)."""

    def error(self, message):
        raise UsageError(message)
