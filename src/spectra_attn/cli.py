"""The ``spectra`` command: the workflow's stages for use outside Snakemake."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spectra_attn import __version__
from spectra_attn import config as spectra_config


def _config_show(args: argparse.Namespace) -> int:
    # Like `snakemake --configfile`: ./config.yaml first, each --configfile overlaid on it.
    base = [Path("config.yaml")] if Path("config.yaml").is_file() else []
    config = spectra_config.load(base + (args.configfile or []))
    print(spectra_config.describe(config))
    return 0


def _shards_inspect(args: argparse.Namespace) -> int:
    from spectra_attn.shard_report import inspect_shards

    print(inspect_shards(args.path, tokenizer=args.tokenizer, top=args.top))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectra", description=__doc__)
    parser.add_argument("--version", action="version", version=f"spectra {__version__}")
    groups = parser.add_subparsers(dest="group", required=True)

    config_parser = groups.add_parser("config", help="configuration")
    config_commands = config_parser.add_subparsers(dest="command", required=True)
    show = config_commands.add_parser(
        "show", help="validate a config and print every design decision and metric formula"
    )
    show.add_argument(
        "--configfile",
        action="append",
        type=Path,
        help="config file overlaid on ./config.yaml (if present) and the defaults; repeatable",
    )
    show.set_defaults(handler=_config_show)

    shards_parser = groups.add_parser("shards", help="token shards")
    shards_commands = shards_parser.add_subparsers(dest="command", required=True)
    inspect = shards_commands.add_parser(
        "inspect", help="shape, dtype, statistics and most frequent tokens of shards"
    )
    inspect.add_argument("path", help="a shard_NNNN.npz, a shards directory or a manifest.json")
    inspect.add_argument(
        "--tokenizer", help="tokenizer to decode tokens with (default: the manifest's)"
    )
    inspect.add_argument("--top", type=int, default=20, help="how many frequent tokens to list")
    inspect.set_defaults(handler=_shards_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (spectra_config.ConfigError, ValueError, FileNotFoundError) as error:
        print(f"spectra: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
