"""Shared test helpers: tiny synthetic data and tiny local transformer models (no hub)."""

from __future__ import annotations

import os

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]


def synthetic_log(seed: int = 0, users: int = 30, items: int = 40, rows: int = 600):
    """Random interactions: list of (user, item, rating, timestamp) with ties and repeats."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, users + 1)), int(rng.integers(1, items + 1)), int(rng.integers(1, 6)),
             int(rng.integers(1_000, 1_300))) for _ in range(rows)]


def write_movielens(directory: str, seed: int = 0, users: int = 30, items: int = 40, rows: int = 600,
                    extra_lines: tuple[str, ...] = ()) -> list:
    """Writes ratings.dat + movies.dat in MovieLens format; returns the interaction list."""
    os.makedirs(directory, exist_ok=True)
    log = synthetic_log(seed, users, items, rows)
    with open(os.path.join(directory, "ratings.dat"), "w", encoding="utf-8") as f:
        for u, i, r, t in log:
            f.write(f"{u}::{i}::{r}::{t}\n")
        for line in extra_lines:
            f.write(line + "\n")
    with open(os.path.join(directory, "movies.dat"), "w", encoding="latin-1") as f:
        for i in range(1, items + 1):
            genres = "|".join(GENRES[(i + k) % len(GENRES)] for k in range(1 + i % 2))
            f.write(f"{i}::Movie number {i} ({1990 + i % 10})::{genres}\n")
    return log


def save_tiny_bert(directory: str) -> str:
    """A 2-layer random BERT + a word-piece tokenizer with a tiny vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(directory, exist_ok=True)
    words = sorted({w.lower().strip(".,()") for i in range(1, 50) for w in
                    f"Movie number {i} ({1990 + i % 10}). Genres: {', '.join(GENRES)}".split()} | set("0123456789"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[w for w in words if w]]
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=os.path.join(directory, "vocab.txt")).save_pretrained(directory)
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    return directory


def save_tiny_llama(directory: str) -> str:
    """A 2-layer random Llama (decoder) with a byte-level BPE tokenizer trained on tiny text."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    os.makedirs(directory, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"Movie number {i} ({1990 + i % 10}). Genres: {', '.join(GENRES)}" for i in range(100)]
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaModel(config).save_pretrained(directory)
    return directory


def one_step_on_one_and_two_replicas(build, base: dict, single, single_data, files: list[str]) -> dict:
    """For the two-replica scripts (run in a process with 2 logical CPUs): one SGD step of `single` (a model
    `build(config, strategy)` made on one replica) on `single_data`, and of models built under MirroredStrategy
    with global in-batch negatives on and off, on the same global batch (from `files`), from single's weights
    before its step. Returns single's loss and largest weight move, and per flag the loss and the largest
    weight difference to single after the step."""
    import tensorflow as tf

    from llm_hardneg.components.trainer import TrainerConfig
    from llm_hardneg.components.trainer.distribute import epoch_batches

    start = single.get_weights()
    before = [w.numpy() for w in single.trainable_weights]
    report = {"single": single.fit(single_data, steps_per_epoch=1, verbose=0).history["loss"][0],
              "moved": max(float(np.abs(w.numpy() - b).max()) for w, b in zip(single.trainable_weights, before))}
    mirrored = tf.distribute.MirroredStrategy()
    for flag in (True, False):
        config = TrainerConfig(**base, distribute="mirrored", global_in_batch_negatives=flag)
        model = build(config, mirrored)
        model.set_weights(start)
        loss = model.fit(epoch_batches(mirrored, files, config, seed=0, skip=0), steps_per_epoch=1,
                         verbose=0).history["loss"][0]
        difference = max(float(np.abs(a.numpy() - b.numpy()).max())
                         for a, b in zip(model.trainable_weights, single.trainable_weights))
        report[str(flag)] = {"loss": loss, "weight_difference": difference}
    return report
