"""The team server (prune_tracker/tracking/server.py): PostgreSQL backend, proxied artifacts, MLflow basic-auth on
127.0.0.1, started and stopped by the tests. No credentials -> 401; a user without a grant -> 403 on write; a granted
user logs runs, registers a model and runs a prune entry point through `mlflow run`; `server --check`; the one-line
refusal of --auth without secrets; `users add|grant`; scripts/team-server.sh (which runs `prune-tracker server`)
starts the same set-up with an S3 artifacts destination (moto) and stops it; a start that fails leaves nothing
running; the root's files are private from creation; HTTPS with a self-signed certificate (plain HTTP not served);
an exposure without auth and TLS file mistakes refused before anything is created."""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import mlflow
import pytest
import requests
import torch
from click.testing import CliRunner
from conftest import PROJECT_ROOT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pg_server import User
from test_entrypoints import assert_ok, mlflow_run

from prune_tracker import tracking
from prune_tracker.cli import cli
from prune_tracker.core.models import build_model
from prune_tracker.tracking import server as team

SEARCH = "/api/2.0/mlflow/experiments/search"
TINY_PRUNE = {"dataset": "synthetic", "train_subset": "200", "val_size": "50", "split_seed": "0", "method": "global_l1",
              "ratio": "0.5", "device": "cpu", "batch_size": "50", "arch": "resnet20"}


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _new_experiment(team_server, name: str) -> str:
    with team_server.login(team_server.admin):
        return MlflowClient(team_server.uri).create_experiment(f"{name}-{secrets.token_hex(3)}")


def test_requests_without_valid_credentials_get_401(team_server):
    url = f"{team_server.uri}{SEARCH}"
    assert requests.get(url, params={"max_results": 1}, timeout=10).status_code == 401
    wrong = (team_server.admin_user, team_server.admin_password + "x")
    assert requests.get(url, params={"max_results": 1}, auth=wrong, timeout=10).status_code == 401
    admin = (team_server.admin_user, team_server.admin_password)
    assert requests.get(url, params={"max_results": 1}, auth=admin, timeout=10).status_code == 200
    assert requests.get(f"{team_server.uri}/health", timeout=10).text == "OK"  # health answers without a login


def test_ungranted_user_gets_403_on_write_and_a_granted_user_logs_and_registers(team_server):
    experiment_id = _new_experiment(team_server, "team-grant")
    bob = team_server.create_user()
    with team_server.login(bob):
        client = MlflowClient(team_server.uri)
        assert client.get_experiment(experiment_id).experiment_id == experiment_id  # default permission READ
        with pytest.raises(MlflowException) as refused:
            client.create_run(experiment_id)
        assert refused.value.get_http_status_code() == 403, refused.value.message
    team_server.grant(bob, experiment_id, "EDIT")
    with team_server.login(bob):
        mlflow.set_tracking_uri(team_server.uri)
        try:
            with mlflow.start_run(experiment_id=experiment_id) as run:
                mlflow.log_params({"method": "global_l1", "ratio": 0.5})
                for step in range(3):
                    mlflow.log_metric("val_accuracy", 0.1 * step, step=step)
                tracking.log_model(build_model("resnet20"), "resnet20", 10)
            version = mlflow.register_model(f"runs:/{run.info.run_id}/model", f"team-model-{experiment_id}")
            client.set_registered_model_alias(version.name, "champion", version.version)
            assert client.get_model_version_by_alias(version.name, "champion").run_id == run.info.run_id
        finally:
            mlflow.set_tracking_uri(None)
        logged = client.get_run(run.info.run_id)
        assert logged.info.status == "FINISHED" and logged.data.metrics["val_accuracy"] == pytest.approx(0.2)
        assert logged.info.artifact_uri.startswith("mlflow-artifacts:"), logged.info.artifact_uri
    assert list((team_server.root / "artifacts").rglob("state_dict.pt")), "artifacts not proxied to the server root"
    eve = team_server.create_user()
    with team_server.login(eve), pytest.raises(MlflowException) as refused:
        MlflowClient(team_server.uri).log_metric(run.info.run_id, "val_accuracy", 1.0)
    assert refused.value.get_http_status_code() == 403


def test_check_prints_health_version_backend_and_auth(team_server, mlflow_server, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    anonymous = CliRunner().invoke(cli, ["server", "--check", team_server.uri])
    assert anonymous.exit_code == 0, anonymous.output
    assert f"uri: {team_server.uri}\nhealth: OK\nversion: unknown (needs credentials" in anonymous.output
    assert "backend: sql (SqlStore)" in anonymous.output and "auth: on" in anonymous.output
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_server.admin_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_server.admin_password)
    admin = CliRunner().invoke(cli, ["server", "--check", team_server.uri])
    assert f"version: {mlflow.__version__}\n" in admin.output, admin.output
    plain = team.check_server(mlflow_server)  # the SQLite test server: no auth
    assert plain.ok and plain.auth == "off" and plain.version == mlflow.__version__
    gone = CliRunner().invoke(cli, ["server", "--check", f"http://127.0.0.1:{team.free_port()}"])
    assert gone.exit_code == 1 and "health: unreachable" in gone.output
    _one_line_error(CliRunner().invoke(cli, ["server", "--check", "localhost:5000"]), "http://")


@pytest.mark.parametrize(("env", "message"), [
    ({}, "MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 20}, "--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32}, "has 5 characters"),
])
def test_auth_without_secrets_is_refused_in_one_line_before_any_setup(tmp_path, monkeypatch, env, message):
    for name in team.AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "root"
    _one_line_error(CliRunner().invoke(cli, ["server", "--auth", "--root", str(root)]), message)
    assert not root.exists()


def test_users_add_and_grant_through_the_cli(team_server, monkeypatch):
    experiment_id = _new_experiment(team_server, "team-cli")
    with team_server.login(team_server.admin):
        name = MlflowClient(team_server.uri).get_experiment(experiment_id).name
    user, password = f"carol-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.uri)
    monkeypatch.setenv("PRUNE_TRACKER_NEW_USER_PASSWORD", password)
    _one_line_error(CliRunner().invoke(cli, ["users", "add", user]), "MLFLOW_TRACKING_USERNAME")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_server.admin_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_server.admin_password)
    added = CliRunner().invoke(cli, ["users", "add", user])
    assert added.exit_code == 0 and f"user {user} created" in added.output, added.output
    granted = CliRunner().invoke(cli, ["users", "grant", user, name, "edit"])
    assert granted.exit_code == 0 and f"EDIT on experiment {name!r} (id {experiment_id})" in granted.output
    _one_line_error(CliRunner().invoke(cli, ["users", "grant", user, "no-such-experiment", "EDIT"]),
                    "'no-such-experiment' not found")
    _one_line_error(CliRunner().invoke(cli, ["users", "grant", user, name, "OWNER"]), "OWNER")
    monkeypatch.setenv("PRUNE_TRACKER_NEW_USER_PASSWORD", "short")
    _one_line_error(CliRunner().invoke(cli, ["users", "add", f"{user}-2"]), "needs >= 12")
    with team_server.login(User(user, password)):
        client = MlflowClient(team_server.uri)
        run = client.create_run(experiment_id)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_cli_choices_and_defaults_are_the_library_s():
    grant_choices = next(p for p in cli.commands["users"].commands["grant"].params if p.name == "permission")
    default = next(p for p in cli.commands["server"].params if p.name == "default_permission")
    assert tuple(grant_choices.type.choices) == team.PERMISSIONS
    assert set(default.type.choices) == set(team.PERMISSIONS) - {"DENY"}
    defaults = {p.name: p.default for p in cli.commands["server"].params}
    config = team.ServerConfig()
    for name in ("host", "port", "pg_port", "workers", "auth", "artifacts_destination", "allowed_hosts",
                 "default_permission", "auth_cache_ttl"):
        assert defaults[name] == getattr(config, name), name


@pytest.mark.e2e
def test_prune_entry_point_through_mlflow_run_as_a_granted_user(team_server, tmp_path, monkeypatch):
    experiment_id = _new_experiment(team_server, "team-prune")
    with team_server.login(team_server.admin):
        experiment = MlflowClient(team_server.uri).get_experiment(experiment_id).name
    worker = team_server.create_user()
    team_server.grant(worker, experiment_id, "EDIT")
    model_file = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20").state_dict(), model_file)
    for name, value in team_server.client_env(worker).items():
        monkeypatch.setenv(name, value)
    assert_ok(mlflow_run("prune", {**TINY_PRUNE, "model_uri": str(model_file), "precisions": ""}, experiment=experiment,
                         tracking_uri=team_server.uri))
    with team_server.login(worker):
        client = MlflowClient(team_server.uri)
        (run,) = client.search_runs([experiment_id])
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "prune"
        assert "footprint_best_bytes" in run.data.metrics
        assert tracking.load_model(f"runs:/{run.info.run_id}/model").model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {timeout:.0f} s")


@contextmanager
def _moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A local S3 stand-in (moto) with one bucket; yields the server-side environment that reaches it."""
    port = team.free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        _wait_for(lambda: _s3_ready(s3), 60, "moto S3 server")
        s3.create_bucket(Bucket=bucket)
        yield env
    finally:
        team.stop_process_group(proc)


def _s3_ready(s3) -> bool:
    try:
        s3.list_buckets()
    except Exception:  # noqa: BLE001 - not listening yet
        return False
    return True


def _s3_keys(env: dict[str, str], bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_the_script_equivalent_runs_auth_and_s3_artifacts_and_stops_everything(monkeypatch):
    """scripts/team-server.sh with --auth and an S3 artifacts destination (moto): only the server holds the S3
    settings; a client without them logs an artifact through the server; SIGTERM stops server and cluster."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    script = (PROJECT_ROOT / "scripts" / "team-server.sh").read_text()
    assert "prune_tracker.cli server" in script and "psql" not in script  # one launcher, no SQL of its own
    root = Path(tempfile.mkdtemp(prefix="prune-tracker-script-server-"))
    root.chmod(0o711)
    port, pg_port, bucket = team.free_port(), team.free_port(), "team-artifacts"
    admin = User("admin", secrets.token_urlsafe(16))
    uri = f"http://127.0.0.1:{port}"
    try:
        with _moto_s3(bucket) as s3_env:
            env = {**os.environ, **s3_env, "PYTHON": sys.executable, "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
                   "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
            cmd = [str(PROJECT_ROOT / "scripts" / "team-server.sh"), "--auth", "--root", str(root), "--port", str(port),
                   "--pg-port", str(pg_port), "--workers", "1", "--artifacts-destination", f"s3://{bucket}/mlflow"]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                _wait_for(lambda: proc.poll() is not None or team.check_server(uri).ok, 180, "health")
                check = team.check_server(uri, admin.name, admin.password)
                assert (check.health, check.version, check.auth[:2]) == ("OK", mlflow.__version__, "on")
                monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin.name)
                monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin.password)
                client = MlflowClient(uri)
                run = client.create_run(client.create_experiment("s3-artifacts"))
                client.log_text(run.info.run_id, "pruned", "notes/hello.txt")
                assert any(key.endswith("notes/hello.txt") for key in _s3_keys(s3_env, bucket))
                assert admin.password not in "".join(p.read_text(errors="replace") for p in root.iterdir()
                                                      if p.is_file() and p.name != "mlflow-server.log")
            finally:
                proc.send_signal(signal.SIGTERM)
                output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, output
        assert f"team server {uri} (auth on" in output
        assert not (root / "postgres" / "data" / "postmaster.pid").exists(), "PostgreSQL still running"
        assert not team.check_server(uri).ok
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_start_that_fails_leaves_nothing_running(monkeypatch):
    """The server never answers its health check (the probe is made to fail) while its processes do run: after the
    timeout its process group and the cluster it started are stopped, nothing of it survives."""
    from prune_tracker.tracking.server import launch

    root = Path(tempfile.mkdtemp(prefix="prune-tracker-failed-server-"))
    root.chmod(0o711)
    config = team.ServerConfig(root=root, port=team.free_port(), pg_port=team.free_port(), workers=1)
    seen_serving = []  # whether the mlflow server's processes existed while the health loop probed

    def failing_probe(uri, context=None):
        seen_serving.append(any(str(root) in " ".join(_cmdline(pid)) and "mlflow" in " ".join(_cmdline(pid))
                                for pid in _pids()))
        return False

    monkeypatch.setattr(launch, "_healthy", failing_probe)
    try:
        with pytest.raises(team.ServerError, match="not healthy after 8 s"):
            team.start_team_server(config, timeout=8)
        assert len(seen_serving) > 1 and any(seen_serving), "the health loop ran while the server's processes ran"
        cluster = team.PostgresCluster(root, config.pg_port)
        assert cluster.initialized and cluster.running_port() is None
        assert not any(str(root) in " ".join(_cmdline(pid)) for pid in _pids()), "a server process survived"
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


# ---------------------------------------------------------------- private files, exposure, TLS


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_servers_files_are_private_from_creation(team_server):
    """The fixture's root did not exist before the server made it: every folder 0700, every file 0600 (the root
    itself 0710 with group postgres when run as root, so the cluster's user can only pass through)."""
    root = team_server.root
    with team_server.login(team_server.admin):
        client = MlflowClient(team_server.uri)
        run = client.create_run(client.create_experiment(f"private-{secrets.token_hex(3)}"))
        client.log_text(run.info.run_id, "secret weights", "notes/private.txt")
        client.set_terminated(run.info.run_id)
    if os.geteuid() == 0:
        assert (_mode(root), grp.getgrgid(root.stat().st_gid).gr_name) == (0o710, "postgres")
    else:
        assert _mode(root) == 0o700
    folders = [root / "artifacts", root / "postgres", *(p for p in (root / "artifacts").rglob("*") if p.is_dir())]
    files = [root / "pgpass", root / "basic_auth.ini", root / "mlflow-server.log", root / "postgres" / "postgres.log",
             *(p for p in (root / "artifacts").rglob("*") if p.is_file())]
    assert any(p.name == "private.txt" for p in files), "the artifact was not proxied to the root"
    assert {str(p): oct(_mode(p)) for p in folders if _mode(p) != 0o700} == {}
    assert {str(p): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[str, str]]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM), in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="prune-tracker-tls-"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    try:
        yield str(folder / "cert.pem"), str(folder / "key.pem")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_tls_serves_https_only_and_a_client_logs_a_run_trusting_the_certificate(tls_files, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="prune-tracker-tls-server-"))
    base.chmod(0o711)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    try:
        with team.running_team_server(base / "server", team.LocalServerOptions(tls=tls_files), timeout=300) as uri:
            assert uri.startswith("https://127.0.0.1:")
            with pytest.raises(requests.exceptions.ConnectionError):  # nothing answers plain HTTP on that port
                requests.get(uri.replace("https://", "http://") + "/health", timeout=10)
            with pytest.raises(requests.exceptions.SSLError):  # an untrusted certificate is refused
                requests.get(f"{uri}/health", timeout=10)
            monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", tls_files[0])
            client = MlflowClient(uri)
            run = client.create_run(client.create_experiment("over-https"))
            client.log_metric(run.info.run_id, "val_accuracy", 0.5)
            client.log_text(run.info.run_id, "pruned", "notes/hello.txt")
            client.set_terminated(run.info.run_id)
            logged = client.get_run(run.info.run_id)
            assert logged.info.status == "FINISHED" and logged.data.metrics["val_accuracy"] == 0.5
            assert client.list_artifacts(run.info.run_id, "notes")[0].path == "notes/hello.txt"
            check = CliRunner().invoke(cli, ["server", "--check", uri])
            assert check.exit_code == 0 and "health: OK" in check.output, check.output
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.parametrize("args,message", [
    (["--host", "0.0.0.0"], "host='0.0.0.0' without --auth would let anyone who reaches port 5000 read and write"),
    (["--tls-cert", "/no/such/cert.pem", "--tls-key", "/no/such/key.pem"],
     "tls_cert='/no/such/cert.pem' is not allowed; no such file"),
    (["--tls-cert", "{cert}"], "tls_cert needs --tls-key too"),
    (["--tls-cert", "{cert}", "--tls-key", "{cert}"], "cannot serve HTTPS"),
])
def test_exposure_and_tls_mistakes_are_refused_before_anything_is_created(tmp_path, tls_files, args, message):
    root = tmp_path / "root"
    args = [arg.replace("{cert}", tls_files[0]) for arg in args]
    _one_line_error(CliRunner().invoke(cli, ["server", "--root", str(root), *args]), message)
    assert not root.exists()


def test_an_open_or_clear_text_exposure_is_a_choice_and_warned_about(tls_files):
    open_on_purpose = team.ServerConfig(host="0.0.0.0", insecure=True)
    team.validate_config(open_on_purpose)
    assert "without --auth (--insecure)" in team.exposure_warning(open_on_purpose)
    clear_text = team.ServerConfig(host="0.0.0.0", auth=True)
    assert "passwords cross the network in clear" in team.exposure_warning(clear_text)
    cert, key = tls_files
    assert team.exposure_warning(team.ServerConfig(host="0.0.0.0", auth=True, tls_cert=cert, tls_key=key)) is None
    assert team.exposure_warning(team.ServerConfig()) is None  # loopback
    assert team.ServerConfig(tls_cert=cert, tls_key=key).uri.startswith("https://")
