"""llm-hardneg pipeline steps. Importing the package selects Keras 2 (TF_USE_LEGACY_KERAS=1) and
offline Hugging Face before TensorFlow or transformers load."""

import llm_hardneg.components.common.env  # noqa: F401
