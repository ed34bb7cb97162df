"""Capture: one forward pass per batch records, for every layer, head and token, the query norm and
the attention metrics of :mod:`spectra_attn.model.metrics` (through the recorder of
:mod:`spectra_attn.model.attention`), and writes them as rows of a zstd Parquet file, one file per
job's range of samples, atomically.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from spectra_attn import __version__
from spectra_attn.columns import ORIGINAL_CSV_COLUMNS
from spectra_attn.io import atomic_path
from spectra_attn.model.architectures import summary
from spectra_attn.model.attention import AttentionRecorder, CaptureSettings, RecordingComplete
from spectra_attn.model.loading import ModelSpec, cuda_devices, input_device, prepare
from spectra_attn.model.parquet_parts import PartsWriter

logger = logging.getLogger(__name__)

# capture_batch on a GPU queues each layer's copies of its metrics to the host without waiting for
# them, and waits once per batch (False: waits for every copy; benchmarks/gpu_capture.py compares).
NON_BLOCKING_COPIES = True


COLUMNS = (
    *ORIGINAL_CSV_COLUMNS,
    "sink_attn",
    "gain_max_attn",
    "gain_entropy",
)


VALUE_DTYPES = {
    "query_norm": np.float32,
    "entropy": np.float32,
    "max_attn": np.float32,
    "k_eff": np.int32,
    "sink_attn": np.float32,
    "gain_max_attn": np.float32,
    "gain_entropy": np.float32,
}


def to_columns(
    layers: dict[int, dict[str, torch.Tensor]], sample_ids: np.ndarray
) -> dict[str, np.ndarray]:
    """Long-format columns ordered by (sample_id, layer, head, token_pos)."""
    order = sorted(layers)
    first = layers[order[0]]["entropy"]
    batch, heads, length = first.shape
    n_layers = len(order)
    shape = (batch, n_layers, heads, length)
    columns = {
        "sample_id": np.broadcast_to(
            np.asarray(sample_ids, dtype=np.int32)[:, None, None, None], shape
        ).ravel(),
        "layer": np.broadcast_to(np.asarray(order, dtype=np.int16)[None, :, None, None], shape)
        .ravel()
        .copy(),
        "head": np.broadcast_to(np.arange(heads, dtype=np.int16)[None, None, :, None], shape)
        .ravel()
        .copy(),
        "token_pos": np.broadcast_to(np.arange(length, dtype=np.int32), shape).ravel().copy(),
    }
    for name, dtype in VALUE_DTYPES.items():
        stacked = torch.stack([layers[layer][name] for layer in order], dim=1)  # [B, L, H, T]
        columns[name] = stacked.numpy().astype(dtype, copy=False).ravel()
    return columns


def forward_for_metrics(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """Run ``input_ids`` through ``model`` for what an active recorder records, nothing else: with
    ``stop_when_done`` the pass ends after the last recorded layer's queries and keys (on a
    Llama-3-8B capture the last layer's attention and MLP, 1/32 of the pass, are not computed)."""
    with contextlib.suppress(RecordingComplete):
        model(input_ids=input_ids.to(input_device(model)), use_cache=False, logits_to_keep=1)


@torch.inference_mode()
def capture_batch(
    model: torch.nn.Module, input_ids: torch.Tensor, settings: CaptureSettings
) -> dict[int, dict[str, torch.Tensor]]:
    """One forward pass of ``input_ids`` ``[B, T]``; returns per-layer ``[B, heads, T]`` metrics."""
    gpus = cuda_devices(model)
    with AttentionRecorder(
        model, settings, non_blocking_copies=bool(gpus) and NON_BLOCKING_COPIES, stop_when_done=True
    ) as recorder:
        forward_for_metrics(model, input_ids)
        layers = recorder.layers
    # Every layer's copies to the host have landed: each was queued on its own layer's GPU.
    for device in gpus:
        torch.cuda.synchronize(device)
    expected = len(recorder.modules)
    if len(layers) != expected:
        raise RuntimeError(
            f"captured {len(layers)} of {expected} layers: the model did not call the capture "
            "attention function (is its attn_implementation overridden?)"
        )
    return layers


# How capture's Parquet files are encoded. Dictionary-encode only the id columns: on the metric
# floats it costs time and saves nothing.
PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": ["sample_id", "layer", "head"]}


# A row group holds whole samples, at least this many rows (unless its batch has fewer): one
# sample of a Llama-3-8B-shaped capture at 512 tokens is 524,288 rows, of the bench model 32,768.
ROW_GROUP_ROWS = 1 << 17


def row_group_tables(layers: dict[int, dict[str, torch.Tensor]], sample_ids: np.ndarray, schema):
    """Functions that each build the Arrow table of the next row group of one batch's metrics
    (per-layer ``[B, heads, T]`` tensors), so that several can be built at once."""
    batch, heads, length = next(iter(layers.values()))["entropy"].shape
    step = max(1, -(-ROW_GROUP_ROWS // (len(layers) * heads * length)))
    return [
        partial(
            arrow_table,
            {layer: {k: v[lo : lo + step] for k, v in m.items()} for layer, m in layers.items()},
            sample_ids[lo : lo + step],
            schema,
        )
        for lo in range(0, batch, step)
    ]


def arrow_table(layers: dict[int, dict[str, torch.Tensor]], sample_ids: np.ndarray, schema):
    columns = to_columns(layers, sample_ids)
    # from_pandas: an undefined entropy (NaN) is stored as a Parquet null.
    arrays = [pa.array(columns[f.name], f.type, from_pandas=True) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def writer_threads_for(device: torch.device) -> int:
    """Threads that build and encode capture's row groups: the job's CPU threads (torch's), on a
    GPU but the one that drives it. On the CPU they share the cores with the metrics; the last
    batch's rows, written after its forward pass with nothing beside them, go faster on all of
    them (benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    return max(1, threads - 1) if device.type == "cuda" else threads


def parquet_schema(metadata: dict[str, str] | None = None):
    fields = [
        ("sample_id", pa.int32()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("token_pos", pa.int32()),
        *((name, pa.from_numpy_dtype(dtype)) for name, dtype in VALUE_DTYPES.items()),
    ]
    return pa.schema(fields, metadata=metadata)


class _LogStream:
    """A file-like object that sends tqdm's progress lines to the log."""

    def write(self, text: str) -> None:
        if text.strip():
            logger.info(text.strip())

    def flush(self) -> None:
        pass


def capture_to_parquet(
    model: torch.nn.Module,
    tokens: np.ndarray,
    sample_ids: np.ndarray,
    out_path: str,
    settings: CaptureSettings,
    batch_size: int = 8,
    metadata: dict[str, str] | None = None,
    writer_threads: int = 1,
) -> int:
    """Capture ``tokens`` ``[n, T]`` batch by batch into one zstd Parquet file, written
    atomically. Returns the number of rows.

    Each batch's rows are written on a second thread while the next batch runs through the model,
    so on a GPU the CPU-bound columns and compression overlap the forward passes (at most one
    batch waits to be written). A batch's row groups (whole samples, at least
    :data:`ROW_GROUP_ROWS` rows each unless the batch has fewer) are built and encoded on
    ``writer_threads`` threads at once (:mod:`spectra_attn.model.parquet_parts`); the file's bytes
    do not depend on how many."""
    schema = parquet_schema(metadata)

    def write(writer, layers, ids) -> int:
        makers = row_group_tables(layers, ids, schema)
        writer.write_parts(makers)
        return sum(layer["entropy"].numel() for layer in layers.values())

    rows = 0
    with (
        atomic_path(out_path) as tmp,
        PartsWriter(tmp, schema, writer_threads, **PARQUET_OPTIONS) as writer,
        tqdm(
            total=len(tokens), unit="sample", file=_LogStream(), mininterval=10, ascii=True
        ) as progress,
        ThreadPoolExecutor(1, thread_name_prefix="spectra-parquet") as background,
    ):
        pending = None
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
            layers = capture_batch(model, batch, settings)
            if pending is not None:
                rows += pending.result()  # re-raises a failed write here
            pending = background.submit(
                write, writer, layers, sample_ids[start : start + batch_size]
            )
            progress.update(len(batch))
        if pending is not None:
            rows += pending.result()
    return rows


def run_capture(
    spec: ModelSpec,
    manifest_path: str,
    out_path: str,
    *,
    sample_start: int,
    sample_stop: int,
    settings: CaptureSettings,
    batch_size: int = 8,
    metadata: dict[str, str] | None = None,
) -> int:
    """Capture samples ``[sample_start, sample_stop)`` of the shards into one Parquet file
    (``metadata`` added to its key-value metadata: provenance). Returns the number of rows."""
    table, tokens, model = prepare(spec, manifest_path, sample_start, sample_stop)
    logger.info("capture settings: %s", settings)
    # The architecture, and what pre-RoPE means for it (pre = post without RoPE).
    architecture = {f"architecture.{k}": v for k, v in summary(model.config).items()}
    metadata = {
        "spectra_version": __version__,
        "model": str(spec.name_or_path),
        "dtype": spec.dtype,
        "rope": settings.rope,
        "k_eff_threshold": str(settings.k_eff_threshold),
        "entropy_skip_tokens": str(settings.entropy_skip_tokens),
        **(metadata or {}),
        **architecture,
    }
    threads = writer_threads_for(input_device(model))
    logger.info("Parquet row groups built and encoded on %d thread(s)", threads)
    rows = capture_to_parquet(
        model,
        tokens,
        table["sample_id"].to_numpy(),
        out_path,
        settings,
        batch_size,
        metadata,
        writer_threads=threads,
    )
    logger.info("wrote %d rows to %s", rows, out_path)
    return rows
