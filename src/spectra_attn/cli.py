"""The ``spectra`` command: the workflow's stages for use outside Snakemake.

Each subcommand imports what it runs inside its handler, so that ``spectra --help`` and
``spectra config show`` start in a moment and never load torch, transformers or boto3."""

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


def _schema_key(*keys: str) -> dict:
    """The schema's entry of a configuration key, so that the commands' defaults and choices are
    the workflow's (``config.yaml``'s keys and these options cannot drift apart)."""
    entry = spectra_config.load_schema()
    for key in keys:
        entry = entry["properties"][key]
    return entry


def _checked(entry: dict, name: str):
    """An argparse ``type=`` that converts a value and holds it to the schema entry's bounds."""
    convert = int if entry["type"] == "integer" else float

    def check(text: str):
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        bounds = [
            ("minimum", lambda bound: value >= bound, "at least"),
            ("exclusiveMinimum", lambda bound: value > bound, "above"),
            ("maximum", lambda bound: value <= bound, "at most"),
        ]
        for key, holds, words in bounds:
            if key in entry and not holds(entry[key]):
                raise argparse.ArgumentTypeError(f"{name} must be {words} {entry[key]}, not {text}")
        return value

    return check


def _option(*keys: str) -> dict:
    """``default=``, and ``choices=`` for an enumeration or a ``type=`` holding numbers to the
    schema's bounds (for a list, each item's), of an option named after a configuration key."""
    entry = _schema_key(*keys)
    option: dict = {"default": entry["default"]}
    if "enum" in entry:
        option["choices"] = entry["enum"]
    number = entry.get("items", entry)
    if number.get("type") in ("integer", "number"):
        option["type"] = _checked(number, ".".join(keys))
    return option


def _provenance(args: argparse.Namespace) -> int:
    from spectra_attn.provenance import check_folder

    if not args.results.is_dir():
        raise ValueError(f"{args.results}: not a folder (give results/<run_name>)")
    consistent, text = check_folder(args.results)
    print(text)
    return 0 if consistent else 1


def _shards_inspect(args: argparse.Namespace) -> int:
    from spectra_attn.data.shard_report import inspect_shards

    print(inspect_shards(args.path, tokenizer=args.tokenizer, top=args.top))
    return 0


def _find_manifest(shards: Path) -> Path:
    """A manifest path, or the manifest.json beside (or inside) a shards directory."""
    for candidate in (shards, shards.parent / "manifest.json", shards / "manifest.json"):
        if candidate.is_file() and candidate.suffix == ".json":
            return candidate
    raise FileNotFoundError(f"no manifest.json for shards {shards} (looked beside and inside it)")


def _model_spec(args: argparse.Namespace):
    from spectra_attn.model.loading import ModelSpec

    return ModelSpec(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )


def _capture(args: argparse.Namespace) -> int:
    import logging
    import time

    from spectra_attn.analysis.capture_csv import export_original_csv
    from spectra_attn.data.samples import sample_table
    from spectra_attn.io import write_parquet
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.capture import run_capture

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    manifest = _find_manifest(Path(args.shards))
    out = Path(args.out)
    table = sample_table(manifest, args.n_samples)
    part = out / "part_0000.parquet"
    run_capture(
        _model_spec(args),
        str(manifest),
        str(part),
        sample_start=0,
        sample_stop=args.n_samples,
        settings=CaptureSettings(
            rope=args.rope,
            k_eff_threshold=args.k_eff_threshold,
            entropy_skip_tokens=args.entropy_skip_tokens,
            query_block_size=args.query_block_size,
        ),
        batch_size=args.batch_size,
    )
    write_parquet(table, out / "samples.parquet")
    if args.csv:
        export_original_csv(
            [str(part)], str(out / f"attention_metrics_{time.strftime('%Y%m%d_%H%M%S')}.csv")
        )
    return 0


def _intervene(args: argparse.Namespace) -> int:
    import logging

    from spectra_attn.gates import CHECKS
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.checks import run_check
    from spectra_attn.model.intervention import HeadSpec, run_head_sweep

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(args.scales) < 2:
        raise ValueError(
            f"--scales needs at least two values (a gain is a slope), got {args.scales}"
        )
    manifest = str(_find_manifest(Path(args.shards)))
    spec = HeadSpec(args.layer, args.head, args.role)
    settings = CaptureSettings(rope=args.rope)
    out = Path(args.out)
    model = _model_spec(args)
    head_dir = out / spec.name
    outputs = {
        "tokens": head_dir / "tokens.parquet",
        "sweep": head_dir / "sweep.parquet",
        "scale_summary": head_dir / "q_scale_intervention_results.csv",
        "trends": head_dir / "trend_analysis.csv",
    }
    run_head_sweep(
        model,
        manifest,
        spec,
        args.scales,
        args.n_samples,
        settings,
        {k: str(v) for k, v in outputs.items()},
        batch_size=args.batch_size,
    )
    if args.checks:
        for check in CHECKS:
            report_path = out / "checks" / f"{check}_{spec.name}.json"
            run_check(
                check,
                model,
                manifest,
                spec,
                args.scales,
                args.check_samples,
                settings,
                str(report_path),
            )
    return 0


def _sagemaker_run(args: argparse.Namespace) -> int:
    import logging

    from spectra_attn.run.run_state import RemoteState, run_workflow, s3_client, snakemake_command

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    state = RemoteState(s3_client(), args.prefix, args.directory, args.sources)
    command = snakemake_command(args.prefix, args.directory, args.profile, args.snakemake_args)
    return run_workflow(state, command, push_every=args.push_every)


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _sagemaker_launch(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from spectra_attn.run.sagemaker import default_job_name, launch, training_job_request

    region = args.region
    if region is None:
        import boto3

        region = boto3.session.Session().region_name  # from the environment or ~/.aws/config
    request = training_job_request(
        job_name=args.job_name or default_job_name(datetime.now(UTC)),
        image=args.image,
        role=args.role,
        prefix=args.prefix,
        snakemake_args=args.snakemake_args,
        instance_type=args.instance_type,
        volume_gb=args.volume_gb,
        max_runtime_s=round(args.max_runtime_hours * 3600),
        checkpoint_s3_uri=args.checkpoint_s3_uri,
        environment=dict(args.env or []),
        region=region,
    )
    if args.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    if region is None:
        raise ValueError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    print(launch(request, region=region))
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

    provenance = groups.add_parser(
        "provenance",
        help="what made a results folder's outputs, and whether they agree (exit 1 if not)",
        description="Print the provenance that a results folder's outputs carry (capture parts, "
        "sweeps, DuckDB database, verdict.json): Spectra's version, workflow commit, model, "
        "corpus, configuration hash, software and device; and whether all were made from the "
        "same corpus, model and configuration (exit status 0) or not (1).",
    )
    provenance.add_argument("results", type=Path, help="a results folder, e.g. results/demo")
    provenance.set_defaults(handler=_provenance)

    capture = groups.add_parser(
        "capture", help="per-token attention metrics of the first N samples, to Parquet"
    )
    capture.add_argument("--model", required=True, help="hub id or local model folder")
    capture.add_argument(
        "--shards", required=True, help="shards directory (manifest.json beside it) or manifest"
    )
    capture.add_argument(
        "--n-samples",
        required=True,
        type=_checked(_schema_key("capture", "n_samples"), "n_samples"),
    )
    capture.add_argument("--out", required=True, help="output folder")
    capture.add_argument("--rope", **_option("capture", "rope"))
    capture.add_argument("--batch-size", **_option("capture", "batch_size"))
    capture.add_argument("--device", **_option("device"))
    capture.add_argument("--dtype", **_option("model", "dtype"))
    capture.add_argument("--k-eff-threshold", **_option("capture", "k_eff_threshold"))
    capture.add_argument("--entropy-skip-tokens", **_option("capture", "entropy_skip_tokens"))
    capture.add_argument("--query-block-size", **_option("capture", "query_block_size"))
    capture.add_argument("--trust-remote-code", action="store_true")
    capture.add_argument(
        "--csv",
        action="store_true",
        help="also write the original project's attention_metrics_<time>.csv",
    )
    capture.set_defaults(handler=_capture)

    intervene = groups.add_parser(
        "intervene", help="scale one head's query over a sweep of scales (one batched pass each)"
    )
    intervene.add_argument("--model", required=True, help="hub id or local model folder")
    intervene.add_argument(
        "--shards", required=True, help="shards directory (manifest.json beside it) or manifest"
    )
    head_keys = _schema_key("intervention", "heads")["items"]["properties"]
    intervene.add_argument("--layer", required=True, type=_checked(head_keys["layer"], "--layer"))
    intervene.add_argument("--head", required=True, type=_checked(head_keys["head"], "--head"))
    intervene.add_argument("--role", choices=["target", "control"], default="target")
    intervene.add_argument("--scales", nargs="+", **_option("intervention", "scales"))
    intervene.add_argument("--n-samples", **_option("intervention", "n_samples"))
    intervene.add_argument("--out", required=True, help="output folder")
    intervene.add_argument("--rope", **_option("capture", "rope"))
    intervene.add_argument(
        "--batch-size",
        help="samples per sweep pass",
        **_option("intervention", "batch_size"),
    )
    intervene.add_argument("--device", **_option("device"))
    intervene.add_argument("--dtype", **_option("model", "dtype"))
    intervene.add_argument("--trust-remote-code", action="store_true")
    intervene.add_argument(
        "--checks", action="store_true", help="also run the gate checks (on --check-samples)"
    )
    intervene.add_argument("--check-samples", **_option("intervention", "check_samples"))
    intervene.set_defaults(handler=_intervene)

    sagemaker_parser = groups.add_parser(
        "sagemaker", help="run on SageMaker: inputs, outputs and Snakemake's records in S3"
    )
    sagemaker_commands = sagemaker_parser.add_subparsers(dest="command", required=True)
    run = sagemaker_commands.add_parser(
        "run",
        help="pull Snakemake's records from the prefix, run snakemake with the SageMaker "
        "profile, push them back (also when it fails)",
        epilog="example: spectra sagemaker run --prefix s3://my-bucket/spectra -- "
        "--configfile llama3.yaml",
    )
    run.add_argument("--prefix", required=True, help="S3 prefix of the run: s3://bucket/path")
    run.add_argument("--directory", default=".", help="Snakemake's working directory (default: .)")
    run.add_argument("--profile", default="profiles/sagemaker", help="Snakemake profile")
    run.add_argument(
        "--sources",
        default=".",
        help="workflow checkout whose source files' mtimes are kept across containers",
    )
    run.add_argument(
        "--push-every",
        type=float,
        default=300,
        metavar="SECONDS",
        help="also push the records this often while snakemake runs (0: only at the end)",
    )
    run.add_argument("snakemake_args", nargs="*", help="after --: arguments for snakemake")
    run.set_defaults(handler=_sagemaker_run)

    launch = sagemaker_commands.add_parser(
        "launch", help="start the workflow as a SageMaker training job running `sagemaker run`"
    )
    launch.add_argument("--image", required=True, help="ECR image URI with this checkout")
    launch.add_argument("--role", required=True, help="execution role ARN (S3 access)")
    launch.add_argument("--prefix", required=True, help="S3 prefix of the run: s3://bucket/path")
    launch.add_argument("--instance-type", default="ml.g5.2xlarge")
    launch.add_argument("--volume-gb", type=int, default=100, help="instance storage")
    launch.add_argument("--max-runtime-hours", type=float, default=24)
    launch.add_argument(
        "--checkpoint-s3-uri", help="synced with /opt/ml/checkpoints (the workflow needs none)"
    )
    launch.add_argument(
        "--env", action="append", type=_key_value, metavar="NAME=VALUE", help="repeatable"
    )
    launch.add_argument("--job-name", help="default: spectra-<UTC date-time>")
    launch.add_argument("--region", help="default: boto3's (AWS_DEFAULT_REGION, ~/.aws/config)")
    launch.add_argument(
        "--dry-run", action="store_true", help="print the CreateTrainingJob request as JSON"
    )
    launch.add_argument("snakemake_args", nargs="*", help="after --: arguments for snakemake")
    launch.set_defaults(handler=_sagemaker_launch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (spectra_config.ConfigError, ValueError, OSError) as error:
        print(f"spectra: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
