"""Every GPU-side check in one call (≤ 9 minutes, ≤ 8 files), for a task that is lent a GPU.

    PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT" --wheels .whl
    python benchmarks/gpu_check.py --out DIR --quick --device cpu    # the rehearsal, on a CPU

Steps, each in a subprocess with its own time limit, so a slow or failing step leaves the others'
results (``gpu_check.json`` is rewritten after each):

1. ``demo``: the whole demo workflow from nothing (corpus, model, shards, capture, sweeps, gates,
   aggregate, atlas, gain, plots) with ``device: auto`` on a scratch copy of the workflow: it must
   finish, and the model jobs' logs must say they ran on the GPU. Its Snakemake output goes to
   ``demo_workflow.log``.
2. ``gpu_vs_cpu``: the same capture part and sweep run again with ``device: cpu`` (run ``cpu``,
   same shards and model), compared value by value with the GPU's: largest differences per metric,
   NaN positions, k_eff rows that differ.
3. ``slots``: two capture jobs asked for at once (``--resources gpu=2``) on the GPUs nvidia-smi
   lists: each job's log names its device, and no two jobs hold one device at the same time (on a
   one-GPU machine the second waits for the first).
4. ``device_map``: on a machine with two GPUs or more, the same capture part and sweep with the
   demo model split over two of them (model.device_map: layers 0-1 on the first, 2-3 on the
   second; model.gpus: 2), compared with the one-GPU run's (they should be equal). Skipped, with
   the reason, on fewer GPUs.
5. ``gpu_capture``: ``benchmarks/gpu_capture.py`` (Llama-3-8B-shaped checks and timings) with the
   time left; it writes ``gpu_capture.json`` and ``gpu_profile.txt``.

Needs PyTorch, transformers, numpy, numba, pandas, pyarrow and matplotlib, which the lent GPU
machines have. Snakemake and what it needs, duckdb, zstandard, scipy, seaborn and accelerate are
installed from ``--wheels`` (a folder of wheels made beforehand, see ../shared/gpu-wheels.md) into
a scratch folder when they are not importable; ``gpu_check.json`` lists which were.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ("Snakefile", "rules", "workflow_scripts", "envs", "report", "config.yaml")
NEEDED = (
    "snakemake",
    "duckdb",
    "zstandard",
    "scipy",
    "seaborn",
    "yaml",
    "jsonschema",
    "accelerate",
)
METRICS = ("query_norm", "entropy", "max_attn", "k_eff")
# A run small enough to leave the benchmark most of the 9 minutes, large enough to use every rule.
CHECK_CONFIG = {
    "capture": {"n_samples": 16, "samples_per_job": 8},
    "intervention": {"n_samples": 8, "check_samples": 2},
    "gain": {"bootstrap_samples": 500},
}
# The demo model (4 decoder layers) split over two GPUs, for the device_map step.
SPLIT_CONFIG = {
    "run_name": "split",
    "model": {
        "device_map": {
            "model.embed_tokens": 0,
            "model.rotary_emb": 0,
            "model.layers.0": 0,
            "model.layers.1": 0,
            "model.layers.2": 1,
            "model.layers.3": 1,
            "model.norm": 1,
            "lm_head": 1,
        },
        "gpus": 2,
    },
}
QUICK_CONFIG = {  # the CPU rehearsal: the same steps on a model trained for a few steps
    "capture": {"n_samples": 4, "samples_per_job": 2},
    "intervention": {"n_samples": 4, "check_samples": 2, "scales": [0.5, 1.0, 1.5]},
    "gain": {"bootstrap_samples": 100},
    "aggregate": {"histogram_bins": 50},
    "demo": {"train_steps": 5},
}


def environment(wheels: Path | None, scratch: Path) -> dict:
    """Make what the workflow imports importable (installing --wheels if need be), put the
    checkout's src/ on the path for every subprocess, and describe the machine."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    installed: list[str] = []
    if missing and wheels is not None and wheels.is_dir():
        site = scratch / "site"
        files = sorted(str(p) for p in wheels.glob("*.whl"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            + ["--no-compile", "--target", str(site), *files],
            check=True,
        )
        installed = [Path(f).name for f in files]
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import torch

    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "missing_before": missing,
        "installed_from_wheels": installed,
        "still_missing": [n for n in NEEDED if importlib.util.find_spec(n) is None],
    }


def run(command: list[str], cwd: Path, timeout_s: float, env: dict | None = None) -> dict:
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=max(timeout_s, 1),
            env={**os.environ, **(env or {})},
        )
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        rc, output = "timeout", expired.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
    return {"rc": rc, "seconds": round(time.monotonic() - started, 1), "output": output}


def snakemake(workdir: Path, args: list[str], timeout_s: float, env: dict | None = None) -> dict:
    return run([sys.executable, "-m", "snakemake", *args], workdir, timeout_s, env)


def scratch_workflow(folder: Path, overlay: dict) -> Path:
    """A copy of the workflow (as a user's checkout) with the check's configuration overlay."""
    import yaml

    folder.mkdir(parents=True)
    for name in WORKFLOW:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    # The rules declare the package modules under the Snakefile's folder as inputs.
    shutil.copytree(ROOT / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "check.yaml").write_text(yaml.safe_dump(overlay))
    return folder


def job_devices(log_dir: Path) -> list[dict]:
    """Each model job's device and when it ran, read from its log."""
    jobs = []
    for log in sorted(log_dir.rglob("*.log")):
        text = log.read_text(errors="replace")
        used = re.search(r"using GPU ([\w, ]+) \(", text)
        stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", text, flags=re.M)
        on_cpu = "running on the CPU" in text
        if used or on_cpu:
            jobs.append(
                {
                    "log": str(log.relative_to(log_dir)),
                    "gpu": used.group(1) if used else None,
                    "cpu_fallback": on_cpu,
                    "start": stamps[0] if stamps else None,
                    "end": stamps[-1] if stamps else None,
                }
            )
    return jobs


def compare_runs(one: Path, other: Path) -> dict:
    """The first capture part and the L2_H0 sweep of two runs' results folders, value by value."""
    return {
        "capture": compare_tables(
            one / "capture" / "part_0000.parquet",
            other / "capture" / "part_0000.parquet",
            ["sample_id", "layer", "head", "token_pos"],
        ),
        "sweep": compare_tables(
            one / "intervention" / "L2_H0" / "sweep.parquet",
            other / "intervention" / "L2_H0" / "sweep.parquet",
            ["layer", "head", "role", "scale", "sample_id"],
        ),
    }


def compare_tables(gpu: Path, cpu: Path, keys: list[str]) -> dict:
    """Value-by-value comparison of two Parquet tables of the same rows."""
    import numpy as np
    import pandas as pd

    a = pd.read_parquet(gpu).sort_values(keys, kind="stable").reset_index(drop=True)
    b = pd.read_parquet(cpu).sort_values(keys, kind="stable").reset_index(drop=True)
    result: dict = {"rows": [len(a), len(b)], "keys_equal": bool(a[keys].equals(b[keys]))}
    for metric in (m for m in METRICS if m in a.columns):
        x, y = a[metric].to_numpy(np.float64), b[metric].to_numpy(np.float64)
        both = ~np.isnan(x) & ~np.isnan(y)
        diff = np.abs(x - y)[both]
        scale = np.maximum(np.abs(y[both]), 1e-12)
        result[metric] = {
            "nan_positions_equal": bool((np.isnan(x) == np.isnan(y)).all()),
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "max_rel": float((diff / scale).max()) if diff.size else 0.0,
            "rows_differing": int((diff > 0).sum()),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--wheels", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="where gpu_capture.py runs")
    parser.add_argument("--budget-s", type=float, default=530, help="the whole call's time")
    parser.add_argument("--quick", action="store_true", help="the CPU rehearsal's sizes")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    scratch = Path(tempfile.mkdtemp(prefix="spectra-gpu-check-"))
    report: dict = {"command": " ".join(sys.argv), "steps": {}}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    def left(reserve: float = 0) -> float:
        return deadline - time.monotonic() - reserve

    report["environment"] = environment(args.wheels, scratch)
    save()
    overlay = QUICK_CONFIG if args.quick else CHECK_CONFIG
    workdir = scratch_workflow(scratch / "checkout", overlay)
    cores = str(os.cpu_count() or 2)
    base = ["--configfile", "check.yaml", "--cores", cores]

    if "demo" not in args.skip:
        step = snakemake(workdir, [*base, "--resources", "gpu=1"], left(reserve=150))
        (out / "demo_workflow.log").write_text(step.pop("output")[-2_000_000:])
        verdict = workdir / "results" / "demo" / "gain" / "verdict.json"
        step["verdict"] = json.loads(verdict.read_text()) if verdict.is_file() else None
        step["model_jobs"] = job_devices(workdir / "results" / "demo" / "logs")
        report["steps"]["demo"] = step
        save()

    demo_done = report["steps"].get("demo", {}).get("rc") == 0
    if "gpu_vs_cpu" not in args.skip and demo_done:
        targets = [
            "results/cpu/capture/part_0000.parquet",
            "results/cpu/intervention/L2_H0/sweep.parquet",
        ]
        config = ["--config", "run_name=cpu", "device=cpu"]
        step = snakemake(workdir, [*targets, *base, *config, "--resources", "gpu=1"], left(140))
        step["output"] = step["output"][-3000:]
        if step["rc"] == 0:
            step.update(compare_runs(workdir / "results" / "demo", workdir / "results" / "cpu"))
        report["steps"]["gpu_vs_cpu"] = step
        save()

    if "slots" not in args.skip and demo_done:
        parts = ["results/demo/capture/part_0000.parquet", "results/demo/capture/part_0001.parquet"]
        env = {"SPECTRA_GPUS": "0,1"} if args.quick else {}  # stand-ins on the CPU rehearsal
        step = snakemake(
            workdir,
            [*parts, "--forcerun", "capture", *base, "--resources", "gpu=2"],
            left(120),
            env,
        )
        step["output"] = step["output"][-3000:]
        step["jobs"] = job_devices(workdir / "results" / "demo" / "logs" / "capture")
        report["steps"]["slots"] = step
        save()

    if "device_map" not in args.skip and demo_done:
        from spectra_attn.run.gpus import available_devices

        gpus = available_devices()  # nvidia-smi's list: CUDA is not started in this process
        if len(gpus) < 2 or args.quick:
            reason = "the CPU rehearsal" if args.quick else f"{len(gpus)} GPU(s)"
            step = {"skipped": f"{reason}: splitting the model needs 2 GPUs"}
        else:
            import yaml

            (workdir / "split.yaml").write_text(yaml.safe_dump(SPLIT_CONFIG))
            targets = [
                "results/split/capture/part_0000.parquet",
                "results/split/intervention/L2_H0/sweep.parquet",
            ]
            files = ["--configfile", "check.yaml", "split.yaml", "--cores", cores]
            step = snakemake(workdir, [*targets, *files, "--resources", "gpu=2"], left(110))
            step["output"] = step["output"][-3000:]
            if step["rc"] == 0:
                split = workdir / "results" / "split"
                step.update(compare_runs(workdir / "results" / "demo", split))
                step["jobs"] = job_devices(split / "logs")
        report["steps"]["device_map"] = step
        save()

    if "gpu_capture" not in args.skip:
        command = [sys.executable, str(ROOT / "benchmarks" / "gpu_capture.py"), "--out", str(out)]
        command += ["--device", args.device]
        if args.quick:
            command += ["--tiny", "--samples", "4", "--batch-size", "2", "--repeats", "1"]
        step = run(command, ROOT, left(reserve=10))
        step["output"] = step["output"][-6000:]
        report["steps"]["gpu_capture"] = step
        save()

    shutil.rmtree(scratch, ignore_errors=True)
    for name, step in report["steps"].items():
        print(f"{name}: rc {step.get('rc')} in {step.get('seconds')} s")
    print(f"wrote {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
