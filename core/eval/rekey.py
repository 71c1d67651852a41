"""Re-key finished cells measured before the code digest covered only the syntax tree.

Until 2026-12-04 a cell's key held a digest of the raw bytes of the code that measured it, so a
reworded docstring discarded hours of cells. The digest is now taken over the syntax tree without
docstrings (`core.eval.cache.code_only`). Cells measured by the code at git revision `--rev` are moved to
the new key only where that code and today's have the same syntax tree, so no cell measured by other
code is ever reused: `python -m core.eval.rekey --rev <commit the cells were measured at>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from core.eval.cache import PACKAGE, code_digest, code_only, digest, measuring_files, package_files, policy_digest
from core.policies import make_policy, policy_names
from core.shadow.evaluate import SHADOW_MEASURING_CODE

REPO = PACKAGE.parent


def _at(rev: str, file: Path) -> bytes:
    """`file`'s bytes at git revision `rev`."""
    return subprocess.run(["git", "show", f"{rev}:{file.relative_to(REPO).as_posix()}"], cwd=REPO, check=True,
                          capture_output=True).stdout


def old_and_new_code(files: list[Path], rev: str) -> tuple[str, str] | None:
    """(raw-bytes digest of `files` at `rev`, today's syntax digest), or None where the code differs."""
    then = [_at(rev, f) for f in files]
    if [code_only(b.decode()) for b in then] != [code_only(f.read_text()) for f in files]:
        return None
    return digest(*then), digest(*(code_only(f.read_text()) for f in files))


def policy_renames(rev: str) -> dict[str, tuple[str, str]]:
    """Policy name -> (its cells' identity under the old digest, under the new), for the policies whose
    measuring code is unchanged since `rev` (a policy that cannot be built here is left alone)."""
    renames = {}
    for name in policy_names():
        try:
            policy = make_policy(name)
        except (FileNotFoundError, ValueError):
            continue
        codes = old_and_new_code(measuring_files(policy), rev)
        if codes is not None:
            assert codes[1] == code_digest(policy)
            renames[name] = (digest(policy_digest(policy), codes[0]), digest(policy_digest(policy), codes[1]))
    return renames


def rekey_file(path: Path, identities: dict[tuple[str, str], str], shadow_codes: dict[str, str]) -> int:
    """Rewrite `path`'s keys: an evaluation cell's policy identity (part 2, under the policy named in part 1)
    and a ShadowLLM cell's code digest (part 1) move to their new values. Atomic (a temporary file, then a
    rename); returns the number of cells moved."""
    moved, lines = 0, []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the cell in flight when a run was killed
        parts = record["key"].split("|")
        if parts[0] == "shadow" and parts[1] in shadow_codes:
            parts[1], moved = shadow_codes[parts[1]], moved + 1
        elif len(parts) > 2 and (parts[1], parts[2]) in identities:
            parts[2], moved = identities[(parts[1], parts[2])], moved + 1
        lines.append(json.dumps({"key": "|".join(parts), "value": record["value"]}))
    temporary = path.with_suffix(".rekey")
    temporary.write_text("".join(line + "\n" for line in lines))
    os.replace(temporary, path)
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.eval.rekey", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="git revision whose code measured the cached cells")
    parser.add_argument("--caches", nargs="+", default=["assets/eval_cache", "assets/shadow_cache"],
                        help="folders of cell files (*.jsonl)")
    args = parser.parse_args(argv)
    identities = {(name, old): new for name, (old, new) in policy_renames(args.rev).items()}
    shadow = old_and_new_code(package_files(SHADOW_MEASURING_CODE), args.rev)
    shadow_codes = {} if shadow is None else {shadow[0]: shadow[1]}
    print(f"policies whose code is unchanged since {args.rev}: {', '.join(n for n, _ in identities)}; "
          f"ShadowLLM code {'unchanged' if shadow else 'changed: its cells stay'}")
    for folder in args.caches:
        for path in sorted(Path(folder).glob("*.jsonl")):
            print(f"{path}: {rekey_file(path, identities, shadow_codes)} cells moved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
