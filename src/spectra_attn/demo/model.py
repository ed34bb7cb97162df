"""The offline demo model: a byte-level BPE tokenizer and a small Llama trained on the demo corpus.

``build_demo_model`` reads the ``train`` split of the demo corpus (all seven sources), trains a
Llama-3-style tokenizer on it (byte-level BPE; BOS added to every string by default, so callers
must pass ``add_special_tokens=False`` to avoid it, as with the real Llama-3 tokenizer), and
trains a small grouped-query-attention ``LlamaForCausalLM`` for a few hundred AdamW steps on
``[BOS] + text`` sequences cut from the EOS-joined document stream, the layout of the data stage's
chunks. Brief as it is, the training makes the heads differ: randomly initialised heads attend
almost uniformly, trained ones range from sharp to diffuse; the per-head attention entropy before
and after is logged and written to ``train_log.json``.

Everything is seeded (tokenizer training is deterministic, the weights are initialised under
``torch.manual_seed(seed)``, the batch order comes from a seeded generator), so the same corpus,
settings, seed and thread count give the same weights. The folder is written beside
``out_dir`` and renamed into place at the end, so a killed build leaves no partial model.

torch, tokenizers and transformers are imported inside the functions that use them: Snakemake's
main process imports this module (pre-flight checks of the demo settings) and must not load them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spectra_attn.data.corpus import ReadStats, find_split_files, iter_documents
from spectra_attn.io import atomic_dir, write_json

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2

WARMUP_FRACTION = 0.1
MIN_LR_FRACTION = 0.1  # the cosine decays to this fraction of the peak learning rate
WEIGHT_DECAY = 0.1
ADAM_BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
LOG_EVERY = 10
EVAL_SEQUENCES = 16  # held-out validation sequences for the loss before/after training
ENTROPY_SEQUENCES = 4  # of those, the ones whose attention entropy is measured
ENTROPY_SKIP_TOKENS = 2  # positions 0..1 attend to (almost) nothing but themselves


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (deterministically).

    Special tokens: ``<|begin_of_text|>`` (BOS, id 0), ``<|end_of_text|>`` (EOS, id 1) and
    ``<|pad|>`` (id 2). Like Llama-3's tokenizer it prepends BOS to every string unless called
    with ``add_special_tokens=False``; decoding returns the original text exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the 256 bytes + special tokens")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def _split_texts(corpus_dir: str | Path, split: str) -> list[str]:
    stats = ReadStats()
    texts = [doc.text for doc in iter_documents(find_split_files(corpus_dir, split), stats)]
    if stats.bad_records:
        logger.warning("%s split: skipped %d malformed records", split, stats.bad_records)
    return texts


def _chunks(tokenizer, texts: list[str], seq_len: int):
    """``[n, seq_len]`` int64 tensor of ``[BOS] + (seq_len - 1)`` tokens cut from the stream of
    documents, each tokenized without special tokens and followed by EOS (the data stage's
    layout). The remainder after the last full chunk is dropped."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    encoder.encode_special_tokens = True  # "<|end_of_text|>" inside a text is plain text
    eos = tokenizer.eos_token_id
    stream = []
    for encoding in encoder.encode_batch(texts, add_special_tokens=False):
        stream.extend(encoding.ids)
        stream.append(eos)
    body = seq_len - 1
    n = len(stream) // body
    if n == 0:
        raise ValueError(
            f"the text gives {len(stream)} tokens, fewer than one sequence of {seq_len}"
        )
    ids = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    bos = np.full((n, 1), tokenizer.bos_token_id, dtype=np.int64)
    return torch.from_numpy(np.concatenate([bos, ids], axis=1))


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first ~10% of steps, then cosine decay to MIN_LR_FRACTION."""
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def head_entropies(model, input_ids, skip_tokens: int = ENTROPY_SKIP_TOKENS) -> list[list[float]]:
    """Mean attention entropy (nats) of every ``[layer][head]`` over ``input_ids``, from the
    eager attention probabilities, query positions below ``skip_tokens`` left out."""
    import torch

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(input_ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    result = []
    for layer in attentions:  # [batch, heads, query, key]
        p = layer.float()[:, :, skip_tokens:, :]
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # [batch, heads, query]
        result.append(entropy.mean(dim=(0, 2)).tolist())
    return result


def _spread(entropies: list[list[float]]) -> dict[str, float]:
    flat = [e for layer in entropies for e in layer]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((e - mean) ** 2 for e in flat) / len(flat))
    return {"min": min(flat), "max": max(flat), "mean": mean, "std": std}


def _eval_loss(model, ids) -> float:
    import torch

    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def check_demo_settings(demo: Mapping[str, Any]) -> None:
    """Fail early, naming the key, on settings that cannot make a Llama."""
    heads, kv_heads = demo["num_attention_heads"], demo["num_key_value_heads"]
    if heads % kv_heads:
        raise ValueError(
            f"demo.num_attention_heads={heads} must be a multiple of "
            f"demo.num_key_value_heads={kv_heads}"
        )
    if demo["hidden_size"] % heads:
        raise ValueError(
            f"demo.hidden_size={demo['hidden_size']} is not a multiple of "
            f"demo.num_attention_heads={heads}"
        )
    if demo["train_seq_len"] > demo["max_position_embeddings"]:
        raise ValueError(
            f"demo.train_seq_len={demo['train_seq_len']} exceeds "
            f"demo.max_position_embeddings={demo['max_position_embeddings']}"
        )


def _llama_config(demo: Mapping[str, Any], tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=demo["hidden_size"],
        intermediate_size=demo["intermediate_size"],
        num_hidden_layers=demo["num_hidden_layers"],
        num_attention_heads=demo["num_attention_heads"],
        num_key_value_heads=demo["num_key_value_heads"],
        max_position_embeddings=demo["max_position_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )


def build_demo_model(
    corpus_dir: str | Path,
    out_dir: str | Path,
    demo: Mapping[str, Any],
    seed: int,
    threads: int = 1,
) -> dict:
    """Train the demo tokenizer and Llama on ``corpus_dir``'s train split and save both to
    ``out_dir`` (loadable with ``AutoTokenizer``/``AutoModelForCausalLM``). Returns the training
    log that is also written to ``out_dir/train_log.json``."""
    import torch
    from transformers import LlamaForCausalLM

    check_demo_settings(demo)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        texts = _split_texts(corpus_dir, "train")
        logger.info("read %d train documents (%.1f MB)", len(texts), sum(map(len, texts)) / 1e6)
        tokenizer = train_tokenizer(texts, demo["vocab_size"])
        tokenizer_s = time.perf_counter() - started
        logger.info("trained a %d-token BPE tokenizer in %.1f s", len(tokenizer), tokenizer_s)

        seq_len, batch_size, steps = (
            demo["train_seq_len"],
            demo["train_batch_size"],
            demo["train_steps"],
        )
        train_ids = _chunks(tokenizer, texts, seq_len)
        eval_ids = _chunks(tokenizer, _split_texts(corpus_dir, "validation"), seq_len)
        eval_ids = eval_ids[:EVAL_SEQUENCES]
        generator = torch.Generator().manual_seed(seed)
        needed = steps * batch_size
        order = torch.cat(
            [
                torch.randperm(len(train_ids), generator=generator)
                for _ in range(-(-needed // len(train_ids)) or 1)
            ]
        )[:needed]
        logger.info(
            "%d train sequences of %d tokens; %d steps x %d sequences (%.1f epochs)",
            len(train_ids),
            seq_len,
            steps,
            batch_size,
            needed / len(train_ids),
        )

        config = _llama_config(demo, tokenizer)
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config).to(torch.float32)
        model.set_attn_implementation("sdpa")
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("initialised a %.2fM-parameter Llama (%s)", n_params / 1e6, dict(demo))

        model.eval()
        entropy_before = head_entropies(model, eval_ids[:ENTROPY_SEQUENCES])
        eval_before = _eval_loss(model, eval_ids)

        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": WEIGHT_DECAY},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=demo["learning_rate"],
            betas=ADAM_BETAS,
            foreach=False,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
        model.train()
        train_started = time.perf_counter()
        losses = []
        for step in range(steps):
            batch = train_ids[order[step * batch_size : (step + 1) * batch_size]]
            loss = model(batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            if step == 0 or (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
                losses.append({"step": step + 1, "loss": round(loss.item(), 5), "lr": lr})
                logger.info("step %d/%d loss %.4f lr %.2e", step + 1, steps, loss.item(), lr)
        train_s = time.perf_counter() - train_started
        model.eval()
        eval_after = _eval_loss(model, eval_ids)
        entropy_after = head_entropies(model, eval_ids[:ENTROPY_SEQUENCES])
        spread_before, spread_after = _spread(entropy_before), _spread(entropy_after)
        logger.info(
            "validation loss %.3f -> %.3f; per-head attention entropy: before training "
            "%.3f..%.3f (std %.3f), after %.3f..%.3f (std %.3f) nats",
            eval_before,
            eval_after,
            spread_before["min"],
            spread_before["max"],
            spread_before["std"],
            spread_after["min"],
            spread_after["max"],
            spread_after["std"],
        )

        log = {
            "seed": seed,
            "threads": threads,
            "demo": dict(demo),
            "model_config": config.to_diff_dict(),
            "n_parameters": n_params,
            "train_documents": len(texts),
            "train_sequences_available": len(train_ids),
            "optimizer": {
                "name": "AdamW",
                "peak_lr": demo["learning_rate"],
                "betas": list(ADAM_BETAS),
                "weight_decay": WEIGHT_DECAY,
                "warmup_fraction": WARMUP_FRACTION,
                "min_lr_fraction": MIN_LR_FRACTION,
                "grad_clip": GRAD_CLIP,
            },
            "loss": losses,
            "validation_loss": {"before": eval_before, "after": eval_after},
            "head_entropy": {
                "skip_tokens": ENTROPY_SKIP_TOKENS,
                "sequences": len(eval_ids[:ENTROPY_SEQUENCES]),
                "before": entropy_before,
                "after": entropy_after,
                "before_spread": spread_before,
                "after_spread": spread_after,
            },
            "timing_s": {
                "tokenizer": round(tokenizer_s, 2),
                "training": round(train_s, 2),
                "total": round(time.perf_counter() - started, 2),
            },
            "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        }
        _save(model, tokenizer, log, out_dir)
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("saved the demo model to %s in %.1f s", out_dir, time.perf_counter() - started)
    return log


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _save(model, tokenizer, log: dict, out_dir: Path) -> None:
    """Write everything into a sibling temporary folder, then rename it to ``out_dir``."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "train_log.json", log)
