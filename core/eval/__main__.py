"""`python -m core.eval ...`: the evaluation alone (the same flags as `python -m core evaluate`)."""

from core.eval.cli import main

raise SystemExit(main())
