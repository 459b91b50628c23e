"""`gradcam-repro view RUN [--serve] [--port N]`: look at a run's REPORT.html.

Without --serve the page opens in the default browser (it is one self-contained file). With --serve the
run folder is served on 127.0.0.1 only, for a remote machine reached through an SSH tunnel; the command
prints the URL and serves until Ctrl-C.
"""

from __future__ import annotations

import functools
from pathlib import Path

from gradcam_repro.errors import UserError

DEFAULT_PORT = 8000
HOST = "127.0.0.1"  # never another interface: the run folder holds models and data fingerprints


def report_path(run_dir: str | Path) -> Path:
    """RUN/REPORT.html, or a one-line `UserError` saying how to write it."""
    path = Path(run_dir) / "REPORT.html"
    if not path.is_file():
        raise UserError(f"no REPORT.html in {run_dir}; fix: run `gradcam-repro report {run_dir}` "
                        "(a finished run or evaluate writes it too)")
    return path


def open_report(run_dir: str | Path, log=print) -> Path:
    """Open RUN/REPORT.html in the default browser (file:// URI); prints its path either way."""
    import webbrowser

    path = report_path(run_dir).resolve()
    opened = webbrowser.open(path.as_uri())
    log(str(path) if opened else f"{path} (no browser found here: open it yourself, or use `gradcam-repro view "
                                  f"{run_dir} --serve` and a tunnel)")
    return path


def make_server(run_dir: str | Path, port: int = DEFAULT_PORT):
    """A threading HTTP server for the run folder on 127.0.0.1:`port` (0: a free port); not yet serving."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    report_path(run_dir)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(Path(run_dir).resolve()))
    try:
        return ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); fix: pass another --port "
                        "(0 picks a free one)") from None


def report_url(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/REPORT.html"


def serve(run_dir: str | Path, port: int = DEFAULT_PORT, log=print) -> None:
    """Serve the run folder on 127.0.0.1 until Ctrl-C; logs the URL and how to reach it from another machine."""
    server = make_server(run_dir, port)
    bound = server.server_address[1]
    log(f"serving {run_dir} at {report_url(server)} (Ctrl-C stops; from another machine: "
        f"ssh -L {bound}:127.0.0.1:{bound} THIS_HOST, then open the same URL there)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopped")
    finally:
        server.server_close()
