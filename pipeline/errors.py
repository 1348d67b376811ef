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

    def option_names(self) -> list:
        """Every --name this parser knows, to suggest the closest to an unknown one. argparse
        offers no public list; its _actions is what its own error messages read."""
        return [o for action in self._actions for o in action.option_strings if o.startswith("--")]


def closest(word: str, choices):
    """The choice closest to a mistyped word (case aside), or None when none is close. The
    cutoff, difflib's ratio 0.7 (its default 0.6 offered `collector` for `colour`), still takes a
    swapped, missing or extra letter or two (dorp, batchsize, DirectRunnr)."""
    by_folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=0.7)
    return by_folded[close[0]] if close else None


def did_you_mean(word: str, choices, shown: dict = None) -> str:
    """' (did you mean X?)' for the closest choice, to end a UsageError's line; '' for none.
    shown: the text to show for a choice, when not the choice itself (a short name's full path)."""
    match = closest(word, choices)
    if match is None:
        return ""
    return f" (did you mean {shown[match] if shown else match}?)"


def first_line(exc: BaseException) -> str:
    """An exception as one line for a message: its type and the first line of its text (a
    library's error may run to a page, a traceback of its own included)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
