"""Contracts at the command line, and the launch-time check the pipeline runs.

    python -m pipeline.contracts check DIR
    python -m pipeline.contracts import-segment PLAN.json DIR
    python -m pipeline.contracts typegen DIR --lang typescript|python [--sdk SDK] [--out FILE]

`check` prints every problem as `file#/pointer: severity: message` and exits 1 when any
is an error (0 otherwise); a missing argument or directory exits 2.
"""
import argparse
import os
import sys

from pipeline import segment_import, typegen
from pipeline.config import Config
from pipeline.errors import UsageError
from transforms.contracts.lint import check_directory, errors
from transforms.contracts.loader import MissingDirectory
from transforms.experiments import declared


def resolve_directory(directory: str, config_path) -> str:
    """A relative local directory is read relative to the config file that names it."""
    if "://" in directory or os.path.isabs(directory) or not config_path or "://" in config_path:
        return directory
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), directory))


def load(config: Config, config_path=None, warn=sys.stderr) -> Config:
    """The config with its contracts read and checked; UsageError lists every error."""
    settings = config.contracts
    if settings is None:
        return config
    directory = resolve_directory(settings.directory, config_path)
    try:
        contracts, problems = check_directory(directory, config.flatten_depth)
    except MissingDirectory as exc:
        raise UsageError(f"contracts.directory: {exc}") from None
    for problem in problems:
        if problem.severity != "error":
            print(f"sluice: {problem}", file=warn)
    failed = errors(problems)
    if failed:
        listing = "\n".join(f"  {p}" for p in failed)
        raise UsageError(f"contracts.directory: {len(failed)} problem(s) in {directory}:\n{listing}")
    names = {c.name for c in contracts}
    for name, _ in settings.overrides:
        if name not in names:
            raise UsageError(f"config: contracts.overrides.{name}: no such contract in {directory} "
                             f"(names: {', '.join(sorted(names)) or 'none'})")
    for where, message in declared.problems(config.experiments, contracts)[:1]:
        raise UsageError(f"config: {where}: {message}")
    return config._replace(contracts=settings._replace(directory=directory, contracts=contracts))


def _checked(directory: str, depth: int = Config().flatten_depth) -> tuple:
    try:
        return check_directory(directory, depth)
    except MissingDirectory as exc:
        raise UsageError(str(exc)) from None


def _check(args) -> int:
    contracts, problems = _checked(args.directory, args.flatten_depth)
    for problem in problems:
        print(problem)
    failed = errors(problems)
    print(f"{len(contracts)} contract(s), {len(failed)} error(s), {len(problems) - len(failed)} warning(s)",
          file=sys.stderr)
    return 1 if failed else 0


def _import(args) -> int:
    written = segment_import.import_plan(args.plan, args.directory, overwrite=args.force)
    for path in written.files:
        print(f"wrote {path}")
    for warning in written.warnings:
        print(f"contracts: warning: {warning}", file=sys.stderr)
    return 0


def _typegen(args) -> int:
    contracts, problems = _checked(args.directory)
    failed = errors(problems)
    if failed:
        for problem in failed:
            print(problem, file=sys.stderr)
        return 1
    try:
        text = typegen.generate(contracts, args.lang, args.sdk)
    except ValueError as exc:
        raise UsageError(f"--sdk: {exc}") from None
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise UsageError(f"--out {args.out}: cannot write it ({exc.strerror})") from None
        print(f"wrote {args.out}")  # as import-segment says; without --out, stdout is the code alone
    else:
        sys.stdout.write(text)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m pipeline.contracts", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate and lint every contract in a directory")
    check.add_argument("directory")
    check.add_argument("--flatten_depth", type=int, default=Config().flatten_depth)
    check.set_defaults(run=_check)
    imp = commands.add_parser("import-segment", help="write a Segment Protocols tracking plan export as contracts")
    imp.add_argument("plan")
    imp.add_argument("directory")
    imp.add_argument("--force", action="store_true", help="overwrite contracts that already exist")
    imp.set_defaults(run=_import)
    gen = commands.add_parser("typegen", help="typed tracking code for every planned event")
    gen.add_argument("directory")
    gen.add_argument("--lang", required=True, choices=typegen.LANGUAGES)
    gen.add_argument("--sdk", choices=sorted({s for sdks in typegen.SDKS.values() for s in sdks}),
                     help="the client the code calls: analytics-next (analytics.js, TypeScript's default), "
                          "analytics-node, analytics-python (Python's)")
    gen.add_argument("--out")
    gen.set_defaults(run=_typegen)
    return root


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"contracts: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
