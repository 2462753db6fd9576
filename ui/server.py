"""``breakhis-app``: serve the installed BreakHis app with Streamlit.

``breakhis-app [STREAMLIT OPTIONS]`` is ``streamlit run <installed app.py> [STREAMLIT OPTIONS]``: the
settings of the app's own ``.streamlit/config.toml`` apply (installed beside ``app.py``; it binds to
127.0.0.1), and options such as ``--server.port 8600`` or ``--server.address 0.0.0.0`` override them.
Runs, data roots and the audit log follow the same environment variables as ``make run``
(``BREAKHIS_HOME``, default the user's data folder for the app; ``BREAKHIS_RUNS``, default ``runs/`` there).
An app home that cannot be written stops the server before it starts, with the reason (exit code 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"
"""The router script of the app, installed one folder above this package (``breakhis_app/app.py``)."""


def main(argv: list[str] | None = None) -> int:
    """Run the Streamlit server on the app until it is stopped; returns Streamlit's exit code."""
    from streamlit.web import cli as streamlit_cli

    from breakhis_core.errors import BreakHisError
    from breakhis_core.lab.paths import ensure_app_home

    options = sys.argv[1:] if argv is None else list(argv)
    if options[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    try:
        ensure_app_home()
    except BreakHisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.argv = ["streamlit", "run", str(APP), *options]
    try:
        streamlit_cli.main(prog_name="streamlit")
    except SystemExit as exc:  # click ends with SystemExit; its code is the exit code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
