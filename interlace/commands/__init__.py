"""One module per CLI subcommand. Each exposes `add_parser(subparsers)` and `run(args) -> int`, and
imports torch/transformers/ray only inside `run`, so `interlace --help` stays fast."""
