"""Launcher (Hugging Face Spaces runs this file): build the TokenButler Studio page and serve it."""

from __future__ import annotations

import os

from app.space_setup import ensure_embedded_model

ensure_embedded_model()

from app.ui import build_demo, launch_kwargs  # noqa: E402  (after the Space has the model's package)

demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_kwargs(),
    )
