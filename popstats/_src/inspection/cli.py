"""The ``popstats`` command line: reports on saved population statistics.

Examples
--------
``popstats report stats.npz -o report.html`` writes one self-contained
HTML file; ``popstats summary stats.npz`` prints the table and warnings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from popstats._src.errors import PopstatsError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popstats",
        description="Inspect population statistics saved by "
        "PopulationStatistics.save (.npz).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
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
    summary = commands.add_parser("summary", help="print the summary and warnings")
    summary.add_argument("stats", help="statistics file (.npz)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error)."""
    from popstats._src.inspection.describe import text_table
    from popstats._src.inspection.report import (
        SUMMARY_COLUMNS,
        find_warnings,
        summary_rows,
        write_report,
    )
    from popstats._src.persistence import load

    args = _parser().parse_args(argv)
    try:
        stats = load(args.stats)
        if args.command == "report":
            title = args.title or f"popstats report: {args.stats}"
            path = write_report(stats, args.output, title=title,
                                plots=not args.no_plots)
            print(f"wrote {path}")
        else:
            print(text_table(SUMMARY_COLUMNS, summary_rows(stats)))
            for warning in find_warnings(stats):
                print(f"warning: {warning}")
    except PopstatsError as exc:
        print(f"popstats: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
