"""The ``popstats`` command line: reports on saved population statistics.

Examples
--------
``popstats report stats.npz -o report.html`` writes one self-contained
HTML file; ``popstats summary stats.npz`` prints the table (with each
statistic's largest relative standard error), why and when the pass
stopped, and the warnings (those of ``stats.warnings`` first);
``popstats --version`` prints the version. ``popstats`` alone prints the
help and exits with status 2.

Stage: inspection (:mod:`popstats._src.inspection`). Members: :func:`main`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from popstats._src.errors import PopstatsError, install_hint

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    import pytensor

    from popstats._src.version import __version__

    parser = argparse.ArgumentParser(
        prog="popstats",
        description="Inspect population statistics saved by "
        "PopulationStatistics.save (.npz).",
        epilog="Example: popstats summary stats.npz; "
        "popstats report stats.npz -o report.html",
    )
    version = f"popstats {__version__} (PyTensor {pytensor.__version__})"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     title="commands")
    report = commands.add_parser(
        "report", help="write a self-contained HTML report",
        description="Write one HTML file (plots embedded) with the summary "
        "table, coverage, warnings and a plot per statistic.",
    )
    report.add_argument("stats", help="statistics file (.npz)")
    report.add_argument("-o", "--output", default="report.html",
                        help="HTML file to write (default: report.html)")
    report.add_argument("--title", default=None, help="report title")
    report.add_argument("--no-plots", action="store_true",
                        help="leave out the plots (no matplotlib needed)")
    summary = commands.add_parser(
        "summary", help="print the summary, precision, stopping and warnings",
        description="Print one line per statistic (with its largest relative "
        "standard error, rel. SE), why and when the pass stopped, and the "
        "warnings (those of PopulationStatistics.warnings first).",
    )
    summary.add_argument("stats", help="statistics file (.npz)")
    return parser


def _one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error).

    Errors are printed as one line on stderr, ``popstats: error: ...``,
    never as a traceback: a damaged file that :func:`~popstats.load` still
    reads is named with what went wrong (and only a failed load blames the
    file). Characters the terminal cannot encode are written escaped; a
    closed pipe (``popstats summary f.npz | head -2``) ends the command
    quietly with status 141, as Unix tools end.
    """
    from popstats._src.estimation.statistics import load
    from popstats._src.inspection.report import (
        SUMMARY_COLUMNS,
        all_warnings,
        precision_note,
        stopping_lines,
        summary_rows,
        upstream_text,
        write_report,
    )
    from popstats._src.inspection.tables import text_table

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no command: say what there is, not just an error
        parser.print_help(sys.stderr)
        return 2
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a label
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        stats = load(args.stats)
    except PopstatsError as exc:
        return _error(_one_line(str(exc)))
    except Exception as exc:  # a damaged file that load's checks let through
        return _error(f"{args.command} of {args.stats!r} failed while loading it "
                      f"({_one_line(f'{type(exc).__name__}: {exc}')}). The file may "
                      f"be damaged: save the statistics again; if "
                      f"PopulationStatistics.save wrote it as it is, please report "
                      f"this as a popstats bug.")
    try:
        if args.command == "report":
            if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
                return _error(f"report draws its plots with matplotlib, which is not "
                              f"installed. {install_hint('matplotlib', 'plot')} Or "
                              f"pass --no-plots for a report without plots.")
            title = args.title or f"popstats report: {args.stats}"
            path = write_report(stats, args.output, title=title,
                                plots=not args.no_plots)
            print(f"wrote {path}")
        else:
            print(text_table(SUMMARY_COLUMNS, summary_rows(stats)))
            if any(s.upstream != "batch" for s in stats.values()):
                print(upstream_text(stats))
            note = precision_note(stats)
            if note:
                print(note)
            if stats.stopping is not None:
                for line in stopping_lines(stats):
                    print(line)
            for warning in all_warnings(stats):
                print(f"warning: {warning}")
            sys.stdout.flush()
    except BrokenPipeError:  # `popstats summary f.npz | head -2`: as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE
    except PopstatsError as exc:
        return _error(_one_line(str(exc)))
    except Exception as exc:  # the file loaded: not the file's fault
        return _error(f"{args.command} of {args.stats!r} failed "
                      f"({_one_line(f'{type(exc).__name__}: {exc}')}). Please "
                      f"report this as a popstats bug.")
    return 0


def _error(message: str) -> int:
    print(f"popstats: error: {message}", file=sys.stderr)
    return 2

if __name__ == "__main__":
    sys.exit(main())
