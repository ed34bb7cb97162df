"""Glue shared by the Snakemake rules and adapters: logging into the rule's log file, and which
package modules a rule's script runs."""

from __future__ import annotations

import ast
import errno
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from spectra_attn.run import gpus

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/spectra_attn


def setup_logging(log_path: str | Path, level: int = logging.INFO) -> None:
    """Send every log record, and any uncaught exception's traceback, to ``log_path``."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)

    def log_uncaught(exc_type, exc_value, exc_traceback):
        explained = explain_environment_error(exc_value)
        if explained:
            logging.getLogger("spectra").error(explained)
            print(f"spectra: {explained}", file=sys.stderr)
        logging.getLogger("spectra").critical(
            "uncaught exception", exc_info=(exc_type, exc_value, exc_traceback)
        )
        sys.__excepthook__(exc_type, exc_value, exc_traceback)

    sys.excepthook = log_uncaught
    exit_on_sigterm()


def explain_environment_error(error: BaseException) -> str | None:
    """What to do about a fault of the machine rather than of the inputs (a full disk, a folder
    that cannot be written), in a sentence naming the file; None for any other error. Every
    output is written atomically, so what was finished before is intact."""
    if not isinstance(error, OSError):
        return None
    where = f" writing {error.filename}" if error.filename else ""
    kept = "Finished outputs are intact (they are written whole or not at all)"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device{where} ({error.strerror}). {kept}; free space (or "
            "raise the quota) where results/ and resources/ are, or point them at a larger disk, "
            "then run the same snakemake command again."
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot write{where} ({error.strerror}): the folder is read-only or not yours. "
            f"{kept}; run from a folder you can write (results/ and resources/ are created "
            "beside the Snakefile's working directory, see --directory), then run again."
        )
    return None


def _snakemake_running_in(workdir: Path) -> bool:
    """Whether another Snakemake process on this machine works in ``workdir`` (its lock is then
    live, not stale). Other machines sharing the folder cannot be seen from here."""
    mine = {os.getpid(), os.getppid()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) in mine or b"snakemake" not in (proc / "cmdline").read_bytes():
                continue
            if Path(os.readlink(proc / "cwd")) == workdir.resolve():
                return True
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return False


def _is_dry_run_flag(arg: str) -> bool:
    """-n, --dry-run, --dryrun, or short flags run together with n (-np)."""
    if arg in ("--dry-run", "--dryrun"):
        return True
    return arg.startswith("-") and not arg.startswith("--") and arg[1:].isalpha() and "n" in arg


def stale_lock_hint(workdir: Path, argv: list[str]) -> str | None:
    """The commands that continue a run whose Snakemake was killed (SIGKILL, a lost node, a power
    cut): its lock stays in .snakemake/locks and the next run stops at it. None when there is no
    lock, or another Snakemake here holds it."""
    if any(_is_dry_run_flag(a) for a in argv[1:]):
        return None  # a dry run does not take the lock
    locks = workdir / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()) or _snakemake_running_in(workdir):
        return None
    program = "snakemake" if Path(argv[0]).name in ("snakemake", "__main__.py") else argv[0]
    args = [a for a in argv[1:] if a not in ("--unlock", "--rerun-incomplete", "--ri")]
    command = shlex.join([program, *args])
    return (
        f"a lock of an earlier Snakemake run remains in {locks} (it was killed before it could "
        "remove it). If Snakemake stops below with 'Directory cannot be locked' and no other "
        "Snakemake is running in this folder, continue with:\n"
        f"    {command} --unlock\n    {command} --rerun-incomplete"
    )


def claim_job_gpus(snakemake) -> list[str]:
    """Give a model job the GPUs it declares (``resources: gpu=k``) and no other job's, before
    CUDA starts (spectra_attn.run.gpus); nothing for a job told to run on the CPU."""
    if snakemake.params.model.get("device") == "cpu":
        return []
    return gpus.claim(int(getattr(snakemake.resources, "gpu", 0) or 0))


class Terminated(SystemExit):
    """The job was sent SIGTERM (Snakemake cancelling it, SLURM's time limit, a SageMaker stop)."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into an exception in the main thread, so that the ``finally`` blocks of the
    atomic writers remove their temporary files (Python's default would end the process without
    running them). Exits with 128 + 15, as the signal would."""

    def terminate(signum, frame):
        logging.getLogger("spectra").error("terminated by signal %d", signum)
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def package_modules(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> list[Path]:
    """The ``spectra_attn`` modules that ``script`` imports, directly or through each other,
    including imports inside functions, with the ``__init__.py`` of the package and of every
    subpackage on the way (Python runs them on import); sorted.

    Rules declare them as inputs so that editing any module a job runs reruns it: read from the
    imports, the list cannot drift from the code as a hand-written one does.
    """
    package_dir = Path(package_dir)
    found = {package_dir / "__init__.py"}
    pending = [Path(script)]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from spectra_attn.x.y import z` and `from spectra_attn.x import y` (y a module)
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "spectra_attn":
                    continue
                for module in _module_files(package_dir, parts[1:]):
                    if module not in found:
                        found.add(module)
                        pending.append(module)
    return sorted(found)


def _module_files(package_dir: Path, parts: list[str]) -> list[Path]:
    """The files Python runs to import ``spectra_attn.<parts>``: each subpackage's
    ``__init__.py`` on the way and the module itself; none when it is not a module (a name
    imported from one)."""
    files = []
    folder = package_dir
    for index, part in enumerate(parts):
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
            files.append(folder / "__init__.py")
        elif index == len(parts) - 1 and (folder / f"{part}.py").is_file():
            files.append(folder / f"{part}.py")
        else:
            break
    return files
