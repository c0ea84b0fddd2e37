"""Process set-up that must happen before TensorFlow or transformers are imported."""

import logging
import os


def _beam_import_noise(record: logging.LogRecord) -> bool:
    """False for Beam's import-time warning that the optional BigQuery client is absent (we use none)."""
    return not record.getMessage().startswith("apitools not found, and bigquery client libraries")


def configure() -> None:
    """Selects Keras 2 for TFRS and keeps Hugging Face offline and quiet.

    Call at the top of every entry point, before importing TensorFlow.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger().addFilter(_beam_import_noise)  # Beam logs it on the root logger


configure()
