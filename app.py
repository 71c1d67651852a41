"""Launcher (Hugging Face Spaces runs this file): build the TokenButler Studio page and serve it."""

from __future__ import annotations

import os
import time

import torch

from app.space_setup import ensure_embedded_model
from app.state import THREADS_ENV, decode_threads
from core.kernels.select_cpu import warm_up

ensure_embedded_model()
torch.set_num_threads(decode_threads())
print(f"Decoding on {torch.get_num_threads()} thread(s): every core but one, the other streams the page "
      f"(${THREADS_ENV} sets it)", flush=True)
started = time.perf_counter()
print("Compiling the CPU selection kernels (first start only; cached on disk) ...", flush=True)
print(f"Selection kernels ready ({warm_up()}) in {time.perf_counter() - started:.1f} s", flush=True)

from app.ui import build_demo, launch_kwargs  # noqa: E402  (after the Space has the model's package)

demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_kwargs(),
    )
