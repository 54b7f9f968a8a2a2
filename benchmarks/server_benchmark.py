"""Team-server throughput and metric-logging latency (prune_tracker/tracking/server.py).

    python benchmarks/server_benchmark.py --clients 1,2,4,8 --seconds 20 --out benchmarks/results/server_cpu.json

1. Runs per minute through a PostgreSQL-backed team server with basic-auth on (the team set-up: a non-admin
   user granted EDIT, so every request is authenticated and permission-checked) at 1, 2, 4, 8 concurrent client
   processes. A "run" is a small prune-like run: start, tags, 12 params, 50 metrics x 5 steps (one batch per
   step, as a training loop logs), a ~8 KB JSON artifact (proxied through the server), end. Clients start
   together (a barrier, after their imports) and run for `--seconds`; runs/min = finished runs / window.
2. Latency of single `MlflowClient.log_metric` calls (one HTTP request or one SQLite transaction each):
   a SQLite store written directly by the client vs the same team server; median and p95.

Server, PostgreSQL and clients share this machine's cores, so the figures are of the whole set-up on one host.
Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_kind, cpu_model  # noqa: E402  (benchmarks/machine.py)

METRICS, STEPS, PARAMS = 50, 5, 12


def cpu_name() -> str:
    return f"{cpu_model()} ({cpu_kind()})"


def one_run(client, experiment_id: str, index: int) -> None:
    """Start, tag, params, 50 metrics x 5 steps, one small artifact, end: what a short prune run logs."""
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id, tags={"stage": "prune", "method": "global_l1"})
    run_id = run.info.run_id
    params = [Param(f"param_{i}", str(i * index)) for i in range(PARAMS)]
    client.log_batch(run_id, params=params, tags=[RunTag("parent_run_id", "0" * 32)])
    for step in range(STEPS):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"metric_{m}", m * 0.01 + step, now, step) for m in range(METRICS)])
    client.log_dict(run_id, {"layers": {f"layer{i}": {"sparsity": i / 100, "kept": list(range(20))}
                                        for i in range(40)}}, "footprint/breakdown.json")
    client.set_terminated(run_id, "FINISHED")


def client_worker(uri: str, experiment_id: str, seconds: float, barrier, results, user: tuple[str, str]) -> None:
    os.environ.update(MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    one_run(client, experiment_id, 0)  # warm-up: connections, imports of the artifact code path
    barrier.wait()
    start, done, failed = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds:
        try:
            one_run(client, experiment_id, done + 1)
            done += 1
        except Exception:  # noqa: BLE001 - counted and reported
            failed += 1
    results.put({"runs": done, "failed": failed, "elapsed": time.monotonic() - start})


def throughput(uri: str, experiment_id: str, clients: int, seconds: float, user: tuple[str, str]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=client_worker, args=(uri, experiment_id, seconds, barrier, results, user))
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    outs = [results.get(timeout=seconds + 600) for _ in procs]
    for proc in procs:
        proc.join()
    runs = sum(o["runs"] for o in outs)
    window = max(o["elapsed"] for o in outs)
    return {"clients": clients, "runs": runs, "failed": sum(o["failed"] for o in outs), "window_s": round(window, 2),
            "runs_per_min": round(60 * runs / window, 1)}


def latency(uri: str, calls: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"latency-{secrets.token_hex(3)}")
    run_id = client.create_run(experiment_id).info.run_id
    for step in range(10):  # warm-up
        client.log_metric(run_id, "warm", 0.0, step=step)
    times = []
    for step in range(calls):
        t0 = time.perf_counter()
        client.log_metric(run_id, "val_accuracy", step / calls, step=step)
        times.append(1000 * (time.perf_counter() - t0))
    client.set_terminated(run_id)
    times.sort()
    return {"calls": calls, "median_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2), "mean_ms": round(statistics.fmean(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per client count")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    parser.add_argument("--uncached-calls", type=int, default=40,
                        help="log_metric calls against a second server with the auth credential cache off")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from prune_tracker.tracking.server import LocalServerOptions, add_user, grant, running_team_server

    root = Path(tempfile.mkdtemp(prefix="prune-tracker-server-bench-"))
    root.chmod(0o711)
    admin = ("admin", secrets.token_urlsafe(16))
    user = ("bench", secrets.token_urlsafe(16))
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    report: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_start": os.getloadavg(),
                              "server_workers": args.workers, "auth": True, "auth_cache_ttl_s": 60,
                              "metrics_per_run": METRICS * STEPS, "seconds": args.seconds}
    try:
        with running_team_server(root, LocalServerOptions(auth=True, workers=args.workers), env=env) as uri:
            from mlflow.tracking import MlflowClient

            os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
            experiment_id = MlflowClient(uri).create_experiment("server-benchmark")
            add_user(uri, *user)
            grant(uri, user[0], experiment_id, "EDIT")
            os.environ.update(MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
            report["throughput"] = []
            for clients in (int(c) for c in args.clients.split(",")):
                row = throughput(uri, experiment_id, clients, args.seconds, user)
                print(f"{clients} clients: {row['runs_per_min']} runs/min ({row['runs']} runs, {row['failed']} "
                      f"failed, {row['window_s']} s)", flush=True)
                report["throughput"].append(row)
            report["latency_postgres_server"] = latency(uri, args.latency_calls)
        report["latency_sqlite_direct"] = latency(f"sqlite:///{root / 'direct.db'}", args.latency_calls)
        if args.uncached_calls:
            with running_team_server(root / "uncached", LocalServerOptions(auth=True, workers=args.workers,
                                                                            auth_cache_ttl=0), env=env) as uri:
                os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
                add_user(uri, *user)
                os.environ.update(MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
                report["latency_postgres_server_uncached"] = latency(uri, args.uncached_calls)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["load_avg_end"] = os.getloadavg()
    print_markdown(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def print_markdown(report: dict[str, Any]) -> None:
    print(f"\nCPU: {report['cpu']} ({report['cores']} cores); load average at start "
          f"{', '.join(f'{x:.1f}' for x in report['load_avg_start'])}")
    print("\n| concurrent clients | runs/min | runs | failed |\n|---:|---:|---:|---:|")
    for row in report["throughput"]:
        print(f"| {row['clients']} | {row['runs_per_min']} | {row['runs']} | {row['failed']} |")
    print("\n| store | log_metric median (ms) | p95 (ms) |\n|---|---:|---:|")
    for key, label in (("latency_sqlite_direct", "SQLite file, direct"),
                       ("latency_postgres_server", "PostgreSQL team server (HTTP, basic-auth, cache 60 s)"),
                       ("latency_postgres_server_uncached", "PostgreSQL team server (HTTP, basic-auth, cache off)")):
        if key not in report:
            continue
        row = report[key]
        print(f"| {label} | {row['median_ms']} | {row['p95_ms']} |")


if __name__ == "__main__":
    main()
