"""Errors a person fixes on the command line or in the config file (exit status 2)."""
import difflib


class UsageError(Exception):
    """One line naming the option or config key at fault; main() prints it and exits 2."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' naming the choice closest to a mistyped word, or '' when none is
    close. The cutoff, difflib's ratio 0.7 (its default 0.6 offered `collector` for `colour`), still
    takes a swapped, missing or extra letter or two (dorp, batchsize, DirectRunnr)."""
    choices = list(choices)
    by_folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=0.7)
    return f" (did you mean {by_folded[close[0]]}?)" if close else ""
