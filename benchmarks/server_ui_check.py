"""The team server's MLflow UI in headless Chromium: a small study logged through the server, then screenshots.

    python benchmarks/server_ui_check.py --out-dir /tmp/team-ui    # needs chromium (apt-get install -y chromium)

Starts a PostgreSQL + basic-auth team server in a temporary root, creates a user, and runs, as that user over HTTP,
`prune-tracker main` on synthetic data (train -> prune with two methods -> compare -> register the front with the
alias `champion` -> report). Then scripts/screenshot_report.sh renders, logged in as that user (a loopback proxy
adds the basic-auth header: the UI's fetch() refuses page URLs with credentials), the experiment's runs table,
a prune run's model metrics, its sparsity chart (artifact sparsity.png), and the registered model with its
champion alias. Prints the pages and what each PNG is; stops everything at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY = ["--dataset", "synthetic", "--train-subset", "1000", "--val-size", "200", "--epochs", "3", "--lr", "0.1",
         "--ema-decay", "0.9", "--batch-size", "64", "--resize-schedule", "", "--methods", "global_l1,lamp",
         "--ratios", "0.75", "--finetune-epochs", "1", "--device", "cpu", "--precisions", "", "--no-progress",
         "--experiment-name", "team-study"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-authenticate", "upgrade",
              "proxy-authorization", "te", "trailers"}


class LoginProxy:
    """A loopback reverse proxy that adds one user's basic-auth header: the UI's fetch() refuses page URLs with
    credentials in them (``http://user:pass@host``), so the browser talks to this instead of the server."""

    def __init__(self, upstream: str, username: str, password: str):
        import base64
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                headers["Authorization"] = f"Basic {token}"
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def screenshot(url: str, out: Path, size: str = "1400x900") -> None:
    """Render ``url``; keep the page without MLflow's assistant side panel, as a 64-colour PNG (~35 KB)."""
    from PIL import Image

    raw = out.with_suffix(".raw.png")
    subprocess.run([str(ROOT / "scripts" / "screenshot_report.sh"), url, str(raw), size], check=True,
                   stdout=subprocess.DEVNULL)
    with Image.open(raw) as image:
        image.convert("RGB").crop((0, 0, 1030, 900)).quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(
            out, optimize=True)
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from mlflow.tracking import MlflowClient

    from prune_tracker.tracking.server import LocalServerOptions, add_user, running_team_server

    root = Path(tempfile.mkdtemp(prefix="prune-tracker-ui-check-"))
    root.chmod(0o711)
    admin, user = ("admin", secrets.token_urlsafe(16)), ("alice", secrets.token_hex(8))
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    try:
        with running_team_server(root, LocalServerOptions(auth=True), env=env) as uri:
            os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
            add_user(uri, *user)
            client_env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": user[0],
                          "MLFLOW_TRACKING_PASSWORD": user[1], "OMP_NUM_THREADS": "1"}
            subprocess.run([sys.executable, "-m", "prune_tracker.cli", "main", *STUDY], env=client_env, check=True,
                           cwd=root)
            os.environ.update(MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("team-study")
            runs = client.search_runs([experiment.experiment_id], "tags.stage = 'prune'")
            prune = runs[0]
            models = client.search_registered_models()
            champion = next(m for m in models if "champion" in m.aliases)
            proxy = LoginProxy(uri, *user)
            logged_in = proxy.uri
            base = f"{logged_in}/#/experiments/{experiment.experiment_id}"
            pages = {
                "team_ui_runs.png": (f"{base}/runs", "the experiment's runs table"),
                "team_ui_run_metrics.png": (f"{base}/runs/{prune.info.run_id}/model-metrics",
                                            f"model metrics of prune run {prune.info.run_name}"),
                "team_ui_sparsity.png": (f"{base}/runs/{prune.info.run_id}/artifacts/sparsity.png",
                                         "its sparsity chart (artifact sparsity.png)"),
                "team_ui_champion.png": (f"{logged_in}/#/models/{champion.name}",
                                         f"registered model {champion.name}, aliases {dict(champion.aliases)}"),
            }
            for name, (url, what) in pages.items():
                screenshot(url, out_dir / name)
                print(f"{name}: {what}\n    {url.replace(proxy.uri, uri)}")
            proxy.close()
            print(f"runs: {len(client.search_runs([experiment.experiment_id]))}, prune runs: {len(runs)}, "
                  f"registered models: {[m.name for m in models]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
