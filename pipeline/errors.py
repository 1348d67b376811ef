"""Errors a person fixes on the command line or in the config file (exit status 2)."""
import argparse
import difflib


class UsageError(Exception):
    """One line naming the option or config key at fault; main() prints it and exits 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse would print its usage and exit; every command here wants one line instead (the
    job's options, serve's and experiments': a UsageError)."""

    def error(self, message):
        raise UsageError(message)


def closest(word: str, choices):
    """The choice closest to a mistyped word (case aside), or None when none is close. The
    cutoff, difflib's ratio 0.7 (its default 0.6 offered `collector` for `colour`), still takes a
    swapped, missing or extra letter or two (dorp, batchsize, DirectRunnr)."""
    by_folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=0.7)
    return by_folded[close[0]] if close else None


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, to end a UsageError's line; '' for none."""
    match = closest(word, choices)
    return f" (did you mean {match}?)" if match else ""
