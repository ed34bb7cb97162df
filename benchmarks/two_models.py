"""Two models in one run against the two single-model runs one after another (issue 17).

From nothing, in fresh working directories of this checkout's Snakefile, on the offline demo at
small sizes (--train-steps, --samples):

* single: config.yaml alone (the demo Llama, results/demo/), then, in the same directory, the
  second demo model of configs/demo-two-models.yaml alone (results/demo-small/) — two runs one
  after another, each making its own shards;
* several: config.yaml with configs/demo-two-models.yaml (both models and their comparison, one
  `snakemake` call, the shards made once);
* compare: the comparison step alone, forced to run again on the finished directory.

The claim: several ≤ single + compare. Prints one JSON object (seconds, job counts, shard stores
made); a run that fails prints its log's tail and exits non-zero.

    python benchmarks/two_models.py --out /tmp/two_models --cores 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def small(train_steps: int, samples: int) -> str:
    return yaml.safe_dump(
        {
            "data": {"max_sequences": 4 * samples, "sequences_per_shard": 2 * samples},
            "capture": {"n_samples": samples, "samples_per_job": samples // 2},
            "intervention": {"n_samples": samples // 2},
            "gain": {"bootstrap_samples": 200},
            "demo": {"train_steps": train_steps},
        }
    )


def second_model_alone() -> str:
    """The second entry of configs/demo-two-models.yaml as a configuration of its own."""
    entry = yaml.safe_load((ROOT / "configs" / "demo-two-models.yaml").read_text())["models"][1]
    return yaml.safe_dump(entry)


def snakemake(workdir: Path, cores: int, *configfiles: str, extra: tuple = ()) -> float:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d"]
    command += [str(workdir), "--cores", str(cores), "--resources", "gpu=1"]
    if configfiles:
        command += ["--configfile", *(str(workdir / name) for name in configfiles)]
    started = time.perf_counter()
    result = subprocess.run([*command, *extra], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(command)}")
    jobs = result.stderr.count("Finished job")
    print(f"{workdir.name} {' '.join(configfiles)}: {elapsed:.1f} s, {jobs} jobs", file=sys.stderr)
    return elapsed


def workdir(out: Path, name: str, settings: str) -> Path:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "config.yaml", folder / "config.yaml")
    shutil.copy(ROOT / "configs" / "demo-two-models.yaml", folder / "two.yaml")
    (folder / "small.yaml").write_text(settings)
    (folder / "second.yaml").write_text(second_model_alone())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    settings = small(args.train_steps, args.samples)

    single = workdir(args.out, "single", settings)
    first = snakemake(single, args.cores, "small.yaml")
    second = snakemake(single, args.cores, "small.yaml", "second.yaml")
    several_dir = workdir(args.out, "several", settings)
    several = snakemake(several_dir, args.cores, "two.yaml", "small.yaml")
    compare = snakemake(
        several_dir, args.cores, "two.yaml", "small.yaml", extra=("--forcerun", "compare_models")
    )
    figures = {
        "single_first_s": round(first, 1),
        "single_second_s": round(second, 1),
        "single_total_s": round(first + second, 1),
        "compare_s": round(compare, 1),
        "several_s": round(several, 1),
        "several_over_single_plus_compare": round(several / (first + second + compare), 3),
        "shard_stores_single": len(list((single / "resources" / "shards").iterdir())),
        "shard_stores_several": len(list((several_dir / "resources" / "shards").iterdir())),
        "cores": args.cores,
        "train_steps": args.train_steps,
        "samples": args.samples,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
