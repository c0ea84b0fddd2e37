"""Process set-up that must happen before TensorFlow or transformers are imported."""

import os


def configure() -> None:
    """Selects Keras 2 for TFRS and keeps Hugging Face offline and quiet.

    Call at the top of every entry point, before importing TensorFlow.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


configure()
