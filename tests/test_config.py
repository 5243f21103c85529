"""Settings precedence (flags > env > TOML > defaults) and clear start-up errors."""

import json
import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_DATA_DIR", "GATEWAY_ACCESS_KEY", "GATEWAY_SECRET_KEY",
                 "GATEWAY_CONFIG", "GATEWAY_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path, text):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults_need_credentials():
    with pytest.raises(ConfigError, match="no credentials"):
        load_settings()


def test_precedence_flags_env_file_defaults(tmp_path, monkeypatch):
    config = write(tmp_path, 'port = 9001\nhost = "127.0.0.2"\naccess_key = "file"\nsecret_key = "file-secret"\n'
                             'region = "eu-west-1"\n')
    monkeypatch.setenv("GATEWAY_PORT", "9002")
    monkeypatch.setenv("GATEWAY_ACCESS_KEY", "env")
    settings = load_settings(config, access_key="flag")
    assert settings.access_key == "flag"  # flag beats env and file
    assert settings.port == 9002  # env beats file
    assert settings.host == "127.0.0.2"  # file beats default
    assert settings.region == "eu-west-1"
    assert settings.secret_key == "file-secret"
    assert settings.max_clock_skew == 900  # default


def test_bad_setting_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    with pytest.raises(ConfigError, match="port.*GATEWAY_PORT"):
        load_settings(access_key="a", secret_key="b")


def test_unknown_setting_in_file_is_refused(tmp_path):
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\nportt = 1\n')
    with pytest.raises(ConfigError, match="portt"):
        load_settings(config)


def test_a_misspelt_setting_is_called_unknown_with_the_likely_one_and_its_value_unshown(tmp_path):
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\nsecret_kye = "hunter2"\nfrobnicate = 1\n')
    result = run_cli("serve", "--config", str(config), "--print-config")
    assert result.returncode == 2
    assert f"unknown setting secret_kye in {config}: did you mean secret_key?" in result.stderr, result.stderr
    assert f"unknown setting frobnicate in {config}: not a gateway setting" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr  # a misspelt secret is still a secret
    assert "Extra inputs" not in result.stderr  # pydantic's words, not the operator's


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bucket_route_to_unknown_backend(tmp_path):
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\n[buckets]\nfaces = "nas"\n')
    with pytest.raises(ConfigError, match="buckets.faces.*nas"):
        load_settings(config)


def test_own_backends_without_a_default_say_the_builtin_local_one_is_gone(tmp_path):
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\n[backends.s]\ntype = "local"\nroot = "/x"\n')
    with pytest.raises(ConfigError, match=r"'local' is not a configured backend \(configured: s\); a \[backends\] "
                                          r"table replaces the built-in local backend"):
        load_settings(config)


def test_extra_credentials_from_file(tmp_path):
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\n[credentials]\nsecond = "second-secret"\n')
    assert load_settings(config).all_credentials() == {"a": "b", "second": "second-secret"}


def test_a_table_in_the_environment_replaces_the_config_files(tmp_path, monkeypatch):
    """GATEWAY_CREDENTIALS was merged into the file's [credentials] key by key: a leaked key could not
    be revoked through the environment, and GATEWAY_BACKENDS kept the file's options of a backend."""
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\ndefault_backend = "a"\n'
                             '[credentials]\nold-app = "compromised-secret"\n'
                             f'[backends.a]\ntype = "local"\nroot = "{tmp_path}/a"\n')
    monkeypatch.setenv("GATEWAY_CREDENTIALS", '{"new-app": "fresh-secret"}')
    monkeypatch.setenv("GATEWAY_BACKENDS", '{"a": {"type": "memory"}}')
    settings = load_settings(config)
    assert settings.all_credentials() == {"a": "b", "new-app": "fresh-secret"}
    assert settings.backend_configs() == {"a": {"type": "memory"}}
    monkeypatch.setenv("GATEWAY_CREDENTIALS", "{}")  # every extra key revoked
    assert load_settings(config).all_credentials() == {"a": "b"}
    monkeypatch.delenv("GATEWAY_CREDENTIALS")
    monkeypatch.delenv("GATEWAY_BACKENDS")
    settings = load_settings(config, port=9000)
    assert settings.all_credentials() == {"a": "b", "old-app": "compromised-secret"} and settings.port == 9000
    assert settings.backend_configs() == {"a": {"type": "local", "root": f"{tmp_path}/a"}}


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_print_config_masks_secrets(tmp_path):
    result = run_cli("serve", "--access-key", "AK", "--secret-key", "very-secret", "--data-dir", str(tmp_path),
                     "--print-config")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["access_key"] == "AK"
    assert shown["secret_key"] == "****"
    assert "very-secret" not in result.stdout
    assert shown["backends"]["local"]["root"] == str(tmp_path)


def test_print_config_masks_every_secret_backend_option(tmp_path):
    """An s3 backend's session_token (an STS credential) was printed as it was: only names with
    "password" or "secret" in them were masked."""
    config = tmp_path / "gateway.toml"
    config.write_text('default_backend = "remote"\n[backends.remote]\ntype = "s3"\n'
                      'endpoint_url = "http://127.0.0.1:9"\naccess_key_id = "AKID"\n'
                      'secret_access_key = "SECRET-ACCESS"\nsession_token = "SESSION-TOKEN-SECRET"\n')
    result = run_cli("serve", "--config", str(config), "--access-key", "AK", "--secret-key", "very-secret",
                     "--print-config")
    assert result.returncode == 0, result.stderr
    remote = json.loads(result.stdout)["backends"]["remote"]
    assert remote["session_token"] == "****" and remote["secret_access_key"] == "****", remote
    assert remote["access_key_id"] == "AKID" and remote["endpoint_url"] == "http://127.0.0.1:9"
    assert "SESSION-TOKEN-SECRET" not in result.stdout and "SECRET-ACCESS" not in result.stdout


def test_serve_fails_early_with_a_named_setting():
    result = run_cli("serve", "--access-key", "AK", "--secret-key", "s", "--port", "70000")
    assert result.returncode == 2
    assert "port" in result.stderr and "GATEWAY_PORT" in result.stderr


def test_serve_rejects_unknown_backend_type(tmp_path):
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\n[backends.local]\ntype = "floppy"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "backends.local.type" in result.stderr and "floppy" in result.stderr


@pytest.mark.parametrize("kind", ["local", "sharedfs", "memory", "s3", "smb"])
def test_serve_rejects_unknown_backend_options(tmp_path, kind):
    # s3 and smb name all their options: a typo there was Python's "S3Backend.__init__() got an
    # unexpected keyword argument", not this message.
    root = f'root = "{tmp_path}/cv"\n' if kind in ("local", "sharedfs") else ""
    config = write(tmp_path, f'access_key = "a"\nsecret_key = "b"\n[backends.local]\ntype = "{kind}"\n'
                             f'{root}bogus_option = 1\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "backends.local: unknown option bogus_option" in result.stderr, result.stderr


def test_version_and_help():
    from gateway import __version__

    assert __version__ in run_cli("--version").stdout
    for command in (["--help"], ["serve", "--help"], ["plugins", "list", "--help"]):
        result = run_cli(*command)
        assert result.returncode == 0 and "Usage" in result.stdout


@pytest.mark.parametrize("flags, expected", [
    ({"host": ""}, "host (GATEWAY_HOST): must not be empty"),  # uvicorn would listen on every interface
    ({"host": "  "}, "host (GATEWAY_HOST): must not be empty"),
    ({"region": ""}, "region (GATEWAY_REGION): must not be empty"),  # clients and the mount sign with it
    ({"data_dir": ""}, "data_dir (GATEWAY_DATA_DIR): must name a directory"),
    ({"secret_key": ""}, "must not be empty"),
    ({"tls_cert": "/no/such/cert.pem", "tls_key": "/no/such/key.pem"},
     "tls_cert (GATEWAY_TLS_CERT): /no/such/cert.pem is not a file"),
    ({"tls_key": "/etc/hostname"}, "tls_cert and tls_key must be set together"),
    ({"tls_cert": "/etc/hostname", "tls_key": "/etc/hostname"}, "cannot be used"),
    ({"tls_cert": "", "tls_key": ""}, "is empty"),
])
def test_bad_listen_storage_credential_and_tls_settings_are_named(flags, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(**{"access_key": "a", "secret_key": "b", "data_dir": "/tmp/cv-config-test", **flags})
    assert expected in str(info.value)
    assert "settings settings" not in str(info.value) and "invalid setting settings" not in str(info.value)


def test_a_mismatched_tls_pair_is_refused_at_start(tmp_path):
    subprocess.run([sys.executable, "-m", "gateway", "cluster", "tls", "init", "--dir", str(tmp_path),
                    "--node", "n1=127.0.0.1", "--node", "n2=127.0.0.2"], check=True, capture_output=True)
    with pytest.raises(ConfigError, match="cannot be used"):
        load_settings(access_key="a", secret_key="b", tls_cert=str(tmp_path / "n1.pem"),
                      tls_key=str(tmp_path / "n2-key.pem"))
    settings = load_settings(access_key="a", secret_key="b", tls_cert=str(tmp_path / "n1.pem"),
                             tls_key=str(tmp_path / "n1-key.pem"))
    assert settings.tls_cert.name == "n1.pem"


def test_a_stop_signal_during_start_up_is_obeyed_at_once(tmp_path):
    """An S3 backend whose endpoint accepts connections but never answers holds start-up for minutes
    (retries x timeouts); SIGTERM then (systemd's stop, an operator's kill) must not wait for it."""
    import signal
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # never accepts: connections complete, requests get no answer
    config = tmp_path / "gateway.toml"
    config.write_text(f'default_backend = "remote"\n[backends.remote]\ntype = "s3"\n'
                      f'endpoint_url = "http://127.0.0.1:{silent.getsockname()[1]}"\nbucket = "b"\n'
                      'access_key_id = "k"\nsecret_access_key = "s"\n')
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--access-key",
                                "a", "--secret-key", "b", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until uvicorn runs the start-up (its signal handlers are in place)
            line = process.stdout.readline()
            seen.append(line)
            if not line or "Waiting for application startup" in line:
                break
        assert process.poll() is None and "Waiting for application startup" in seen[-1], "".join(seen)
        time.sleep(0.5)  # now inside the backend's start, waiting for the silent endpoint
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
        assert process.returncode == 128 + signal.SIGTERM
        assert "stopped by SIGTERM during start-up" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        silent.close()


def test_a_table_in_the_environment_that_is_not_json_is_named(monkeypatch):
    monkeypatch.setenv("GATEWAY_BACKENDS", "notjson")
    with pytest.raises(ConfigError) as info:
        load_settings(access_key="a", secret_key="b")
    assert "invalid setting backends (GATEWAY_BACKENDS): not valid JSON" in str(info.value)
    assert "EnvSettingsSource" not in str(info.value) and "config file" not in str(info.value)


def test_an_unusable_data_dir_names_the_setting(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    result = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "a-file"),
                     "--port", "18997")
    assert result.returncode == 2
    assert result.stderr == (f"error: backend 'local': root {tmp_path}/a-file is not usable: {tmp_path}/a-file is "
                             "not a directory (--data-dir, GATEWAY_DATA_DIR)\n"), result.stderr  # one line, before the start


def test_print_config_checks_the_backends_without_touching_storage(tmp_path):
    """--print-config is how an operator checks a config before a restart: it builds every backend
    (type and options), so what would fail at start fails here too, and it writes nothing."""
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\n[backends.local]\ntype = "local"\n'
                             f'root = "{tmp_path}/cv"\nbogus = 1\n')
    result = run_cli("serve", "--config", str(config), "--print-config")
    assert result.returncode == 2 and "unknown option bogus" in result.stderr
    good = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "new" / "cv"),
                   "--print-config")
    assert good.returncode == 0, good.stderr
    assert not (tmp_path / "new").exists()


def test_one_access_key_with_two_secrets_is_refused(tmp_path):
    config = write(tmp_path, 'access_key = "ops"\nsecret_key = "one"\n[credentials]\nops = "two"\nviewer = "v"\n')
    with pytest.raises(ConfigError, match="access key 'ops' is given twice with different secrets"):
        load_settings(config)
    same = write(tmp_path, 'access_key = "ops"\nsecret_key = "one"\n[credentials]\nops = "one"\n')
    assert load_settings(same).all_credentials() == {"ops": "one"}


def test_serve_raises_a_low_open_file_limit_to_the_hard_one(tmp_path):
    # The local backend keeps objects of 64 KiB to 1 MiB as open files, up to a quarter of the limit.
    import resource

    from gateway.testing.server import GatewayProcess

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.fail(f"the hard open-file limit here is {hard}: raise it (ulimit -Hn) to run this test")
    expected = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)

    class LowLimitGateway(GatewayProcess):
        # Only the gateway starts with the low limit (prlimit, util-linux): lowering the test
        # process's own would fail it whenever earlier tests left it more than 256 files open.
        def command(self):
            return ["prlimit", f"--nofile=256:{'unlimited' if hard == resource.RLIM_INFINITY else hard}",
                    "--", *super().command()]

    gateway = LowLimitGateway(tmp_path / "cv-storage")
    gateway.start()
    try:
        with open(f"/proc/{gateway.process.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        assert line.split()[3] == str(expected), line
    finally:
        gateway.stop()


def test_a_bad_value_names_where_it_came_from(tmp_path, monkeypatch):
    """The file, the environment or the flag: the operator sees which one to fix (secrets not echoed)."""
    config = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\nport = 0\ncluster_secret = "x"\n')
    with pytest.raises(ConfigError) as from_file:
        load_settings(config)
    assert f"invalid setting port (port = 0 in {config}): " in str(from_file.value)
    monkeypatch.setenv("GATEWAY_PORT", "99999")
    with pytest.raises(ConfigError) as from_env:
        load_settings(config)
    assert "invalid setting port (GATEWAY_PORT='99999' in the environment): " in str(from_env.value)
    with pytest.raises(ConfigError) as from_flag:
        load_settings(config, port=70000)
    assert "invalid setting port (GATEWAY_PORT): " in str(from_flag.value)
    monkeypatch.delenv("GATEWAY_PORT")
    monkeypatch.setenv("GATEWAY_REGION", "")
    with pytest.raises(ConfigError) as empty:
        load_settings(config, port=8086)
    assert "invalid setting region (GATEWAY_REGION='' in the environment): must not be empty" in str(empty.value)
    secret = write(tmp_path, 'access_key = "a"\nsecret_key = "b"\ncluster_secret = 12345678\n')
    with pytest.raises(ConfigError) as hidden:
        load_settings(secret)
    assert f"invalid setting cluster_secret (cluster_secret in {secret}): " in str(hidden.value)
    assert "12345678" not in str(hidden.value)
