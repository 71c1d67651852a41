"""Serve the page in this process on a free loopback port (tests and benchmarks drive it from here)."""

from __future__ import annotations

import socket

import gradio as gr

from app.ui import build_demo, launch_kwargs
from core.kernels.select_cpu import warm_up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local(**options) -> tuple[gr.Blocks, str]:
    """Build the demo (`options` go to build_demo), launch it without blocking on 127.0.0.1, and return it
    with its URL. The selection kernels are warmed up first, as app.py does, so no run pays their load."""
    warm_up()
    demo = build_demo(**options)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    return demo, f"http://127.0.0.1:{port}/"
