"""The `interlace` command line.

Contract for every subcommand: JSON in and out where files are involved, exit status 0 on success,
2 on bad input with a one-line message naming the problem (an `InterlaceError`), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from interlace.errors import EXIT_REFUSED, EXIT_TRANSIENT, InterlaceError, TransientError

# Subcommand name -> module in interlace.cli. A module listed here but not yet present is skipped.
COMMANDS: tuple[str, ...] = (
    "analyze", "data", "plan", "prune", "run", "evaluate", "publish", "validate", "sweep", "builtin",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlace",
        description="INTERLACE layer pruning for vision-language models (arXiv 2511.19676).",
    )
    from interlace import __version__

    parser.add_argument("--version", action="version", version=f"interlace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"interlace.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"interlace.cli.{name}":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Credential values (HF token, S3 keys) are redacted from every log record from the first line on,
    # not only once publishing starts: loading a gated model already handles the HF token.
    from interlace.stages.publish.redact import install as install_redaction

    install_redaction()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except InterlaceError as err:
        msg = str(err).strip().replace("\n", "; ")
        print(f"interlace {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_TRANSIENT if isinstance(err, TransientError) else EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
