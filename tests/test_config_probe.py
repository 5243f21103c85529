"""Configuration mistakes an operator makes, each met with one clear line (real `gateway serve` processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from gateway.testing.server import free_port

ROOT = Path(__file__).parent.parent
CLUSTER = {"GATEWAY_CLUSTER_SECRET": "0123456789abcdef0123"}


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})})


def test_true_or_false_for_a_number_is_refused(tmp_path):
    """pydantic reads true as 1: `port = true` in the file listened on port 1, `max_clock_skew = true`
    allowed one second."""
    for setting in ("port", "max_clock_skew", "heartbeat_interval", "full_store_retry"):
        config = tmp_path / "gateway.toml"
        config.write_text(f'access_key = "a"\nsecret_key = "bbbbbbbb"\ndata_dir = "{tmp_path}/cv"\n{setting} = true\n')
        result = serve("--config", str(config), "--print-config")
        assert result.returncode == 2, (setting, result.stdout)
        assert f"invalid setting {setting} ({setting} = true in {config}): must be a number, not true or false" \
            in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    # The value as the file has it, not as Python shows it (True, 'abc').
    config.write_text(f'access_key = "a"\nsecret_key = "bbbbbbbb"\ndata_dir = "{tmp_path}/cv"\nport = "abc"\n')
    result = serve("--config", str(config), "--print-config")
    assert result.returncode == 2 and f'invalid setting port (port = "abc" in {config}): ' in result.stderr, \
        result.stderr


def test_a_misspelt_gateway_variable_is_named_with_the_likely_one(tmp_path):
    """A typo in the file is refused; one in the environment was ignored without a word, and the error
    that followed (or the default port) pointed elsewhere."""
    result = serve("--print-config", "--data-dir", str(tmp_path / "cv"),
                   env={"GATEWAY_ACCESS_KEY": "a", "GATEWAY_SECRETKEY": "bbbbbbbb"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == ("warning: GATEWAY_SECRETKEY in the environment is not a gateway setting and is ignored: did "
                        "you mean GATEWAY_SECRET_KEY? (every GATEWAY_* variable is listed in docs/configuration.md)")
    assert "access_key and secret_key must be set together" in lines[1]
    assert "bbbbbbbb" not in result.stderr

    result = serve("--print-config", "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir",
                   str(tmp_path / "cv"), env={"GATEWAY_PROT": "9100", "GATEWAY_DISABLE_PLUGINS": "nothing",
                                               "GATEWAY_HEARTBEAT_INTERVAL": "5"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: GATEWAY_PROT in the environment is not a gateway setting and is ignored: did you mean "
        "GATEWAY_PORT? (every GATEWAY_* variable is listed in docs/configuration.md)"], result.stderr


def test_a_proxy_given_a_data_dir_says_it_is_not_used(tmp_path):
    """A proxy stores nothing: [backends] given to it were named at start, a data dir was silently ignored."""
    registry = ["--role", "proxy", "--registry", f"sqlite:///{tmp_path}/registry.db", "--insecure-peers",
                "--access-key", "a", "--secret-key", "bbbbbbbb", "--print-config"]
    for how, env in ((["--data-dir", str(tmp_path / "cv")], CLUSTER),
                     ([], {**CLUSTER, "GATEWAY_DATA_DIR": str(tmp_path / "cv")})):
        result = serve(*how, *registry, env=env)
        assert result.returncode == 0, result.stderr
        assert (f"warning: a proxy stores nothing: data_dir {tmp_path}/cv is not used, nothing is written there"
                in result.stderr), result.stderr
    quiet = serve(*registry, env=CLUSTER)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    assert not (tmp_path / "cv").exists()


def test_a_short_secret_key_is_refused_when_other_machines_can_connect(tmp_path):
    """`--secret-key b` on 0.0.0.0 served the network behind a key found from one signed request."""
    data = ["--data-dir", str(tmp_path / "cv")]
    expected = ("error: the secret key of access key a has fewer than 8 characters, and 0.0.0.0 is reachable from "
                "other machines")
    for args in (["--print-config"], ["--port", str(free_port())]):
        result = serve("--host", "0.0.0.0", "--access-key", "a", "--secret-key", "short", *data, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(expected) and "--secret-key (GATEWAY_SECRET_KEY" in result.stderr, \
            result.stderr
        assert "Traceback" not in result.stderr and "Uvicorn running" not in result.stderr
    config = tmp_path / "gateway.toml"
    config.write_text(f'host = "0.0.0.0"\naccess_key = "main"\nsecret_key = "long-enough-secret"\n'
                      f'data_dir = "{tmp_path}/cv"\n[credentials]\nreports = "1234567"\n')
    result = serve("--config", str(config), "--print-config")
    assert result.returncode == 2 and "the secret key of access key reports has fewer than 8" in result.stderr, \
        result.stderr
    assert "1234567" not in result.stderr
    # On loopback (tests, one machine) a short key is still accepted.
    local = serve("--access-key", "a", "--secret-key", "short", *data, "--print-config")
    assert local.returncode == 0, local.stderr


def _documented_rows() -> list[tuple[str, str, str]]:
    """(setting, flag / variable, default) of the tables in docs/configuration.md."""
    rows = []
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("setting", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_help_and_docs_give_the_code_s_defaults_and_every_variable():
    """serve --help left out the defaults of --data-dir and --log-level; docs/configuration.md, "every
    GATEWAY_* variable", left out the plugin switches."""
    from gateway.config import OTHER_VARIABLES, Settings

    help_text = " ".join(serve("--help").stdout.split())
    documented = {}
    for names, where, default in _documented_rows():
        for name in (n.strip() for n in names.split(",")):
            documented[name] = (where, default)
    assert set(documented) == set(Settings.model_fields), set(documented) ^ set(Settings.model_fields)
    for name, (where, default) in documented.items():
        assert f"GATEWAY_{name.upper()}" in where, name
        field = Settings.model_fields[name]
        code_default = field.default_factory() if field.default_factory else field.default
        words = default.replace("`", "").split()
        if code_default is None:
            assert words[0] == "none" or name in ("advertise", "node_id"), (name, default)  # those two: derived
            continue
        if isinstance(code_default, dict):
            assert default in ("{}", "one `local` on data_dir"), (name, default)
            continue
        if isinstance(code_default, bool):
            assert words[0] == str(code_default).lower(), (name, default)
            continue
        if isinstance(code_default, Path):
            assert Path(words[0]) == code_default, (name, default)
        else:
            assert words[0] in (str(code_default), f"{code_default:g}" if isinstance(code_default, float) else ""), \
                (name, default, code_default)
        flag = re.search(r"`(--[a-z-]+)`", where)
        if flag:  # a flag with a value: its help says the default as the table does
            assert re.search(rf"{re.escape(flag[1])} \S+ (?:(?! --).)*?default {re.escape(words[0])}\b", help_text), \
                (flag[1], words[0])
    text = (ROOT / "docs" / "configuration.md").read_text()
    for variable in OTHER_VARIABLES:
        assert f"`{variable}" in text, variable


def test_an_advertised_url_with_more_than_scheme_host_and_port_is_refused(tmp_path):
    """Peers put the request's path after the advertised URL: `--advertise http://10.0.0.1:8086/gw` was
    accepted, registered and shown healthy, and every call a proxy made to it missed (503 "may be on a
    server that cannot be reached"). A user name and password would have gone to every peer."""
    node = ["--role", "primary", "--registry", f"sqlite:///{tmp_path}/registry.db", "--insecure-peers",
            "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"), "--print-config"]
    for url, expected in (("http://127.0.0.1:8086/gw", "advertise 'http://127.0.0.1:8086/gw' has a path (/gw)"),
                          ("http://127.0.0.1:8086/?a=1", "advertise 'http://127.0.0.1:8086/?a=1' has a query (?a=1)"),
                          ("http://127.0.0.1:8086#x", "advertise 'http://127.0.0.1:8086#x' has a fragment"),
                          ("http://node:hunter2@127.0.0.1:8086", "advertise has a user name or password in it")):
        result = serve(*node, "--advertise", url, env=CLUSTER)
        assert result.returncode == 2, (url, result.stdout)
        assert f"error: invalid settings: {expected}" in result.stderr and "give scheme://host:port only" \
            in result.stderr, result.stderr
        assert "hunter2" not in result.stderr
    join = subprocess.run([sys.executable, "-m", "gateway", "cluster", "join", "--registry",
                           f"sqlite:///{tmp_path}/registry.db", "--advertise", "http://127.0.0.1:8086/gw"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **CLUSTER})
    assert join.returncode == 2 and "is not a URL like" in join.stderr, join.stderr
    for url in ("http://127.0.0.1:8086", "http://127.0.0.1:8086/"):
        result = serve(*node, "--advertise", url, env=CLUSTER)
        assert result.returncode == 0, (url, result.stderr)


def test_an_empty_local_socket_is_named(tmp_path):
    """pathlib reads "" as ".": --print-config passed an empty --local-socket, and serve stopped on
    "--local-socket . exists and is not a socket", a path the operator never gave."""
    keys = ["--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv")]
    for args, env, origin in ((["--local-socket", ""], {}, "GATEWAY_LOCAL_SOCKET"),
                              ([], {"GATEWAY_LOCAL_SOCKET": ""}, "GATEWAY_LOCAL_SOCKET='' in the environment")):
        for end in (["--print-config"], ["--port", str(free_port())]):
            result = serve(*keys, *args, *end, env=env)
            assert result.returncode == 2, result.stderr
            assert f"error: invalid setting local_socket ({origin}): is empty: give the path of the Unix socket" \
                in result.stderr, result.stderr
            assert "Uvicorn running" not in result.stderr


def test_a_cluster_node_that_names_no_machine_to_its_peers_is_told(tmp_path):
    """`--advertise http://0.0.0.0:8086` was registered as is: a peer on another machine connecting to
    0.0.0.0 reaches itself. Without --advertise a node on 0.0.0.0 registers 127.0.0.1, as silently."""
    node = ["--registry", f"sqlite:///{tmp_path}/registry.db", "--insecure-peers", "--access-key", "a",
            "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"), "--print-config"]
    for url, host in (("http://0.0.0.0:8086", "0.0.0.0"), ("http://[::]:8086", "::")):
        result = serve(*node, "--advertise", url, env=CLUSTER)
        assert result.returncode == 2, (url, result.stdout)
        assert (f"error: invalid settings: advertise '{url}' names no machine ({host} is where a server listens: "
                "every interface): give the address peers reach this node at") in result.stderr, result.stderr
    port = free_port()
    result = serve(*node, "--host", "0.0.0.0", "--port", str(port), env=CLUSTER)
    assert result.returncode == 0, result.stderr
    assert (f"warning: listening on 0.0.0.0 without --advertise: this node tells its peers to reach it at "
            f"http://127.0.0.1:{port}, where only nodes on this machine find it") in result.stderr, result.stderr
    for args in (["--host", "0.0.0.0", "--advertise", f"http://192.0.2.7:{port}"], ["--host", "127.0.0.1"]):
        quiet = serve(*node, *args, env=CLUSTER)
        assert quiet.returncode == 0 and "warning" not in quiet.stderr, (args, quiet.stderr)


def test_a_data_dir_beside_a_backends_table_says_it_is_not_used(tmp_path):
    """data_dir is the root of the built-in local backend, which a [backends] table replaces: `--data-dir
    /mnt/big` given to a node whose config file has one (deploy/gateway.toml) stored nothing there, silently."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'access_key = "a"\nsecret_key = "bbbbbbbb"\ndefault_backend = "storage"\n'
                      f'[backends.storage]\ntype = "local"\nroot = "{tmp_path}/st"\n')
    for args, env in ((["--data-dir", str(tmp_path / "big")], {}), ([], {"GATEWAY_DATA_DIR": str(tmp_path / "big")})):
        result = serve("--config", str(config), *args, "--print-config", env=env)
        assert result.returncode == 0, result.stderr
        assert (f"warning: data_dir {tmp_path}/big is not used: a [backends] table replaces the built-in local "
                f"backend on data_dir (configured: storage (local, root {tmp_path}/st)); set the root of the "
                "backend in [backends] instead") in result.stderr, result.stderr
    quiet = serve("--config", str(config), "--print-config")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr


def test_a_tls_key_this_user_may_not_read_is_named(tmp_path):
    """A key file of another user (mode 600) stopped the start with 'tls_cert X and tls_key Y cannot be
    used: Permission denied (both must be PEM ...)': which file, and that PEM was not the problem, unsaid."""
    cert, key = tmp_path / "node.pem", tmp_path / "node-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    command = [sys.executable, "-m", "gateway", "serve", "--access-key", "a", "--secret-key", "bbbbbbbb",
               "--data-dir", str(tmp_path / "cv"), "--tls-cert", str(cert), "--tls-key", str(key), "--print-config"]
    if os.geteuid() == 0:  # root reads every file: run without the capabilities that let it
        os.chown(key, 65534, 65534)
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    else:
        key.chmod(0)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stdout
    expected = f"error: invalid setting tls_key (GATEWAY_TLS_KEY): {key} cannot be read by user "
    assert result.stderr.startswith(expected), result.stderr
    assert "Permission denied: make it readable by the user the gateway runs as" in result.stderr, result.stderr
    assert "PEM" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_print_config_names_a_data_dir_this_user_may_not_write(tmp_path):
    """--print-config (the check before a restart) passed a data dir in another user's directory or under a
    file; only the start then failed, after uvicorn's start-up lines."""
    closed = tmp_path / "closed"
    closed.mkdir()
    command = [sys.executable, "-m", "gateway", "serve", "--access-key", "a", "--secret-key", "bbbbbbbb",
               "--data-dir", str(closed / "cv"), "--print-config"]
    if os.geteuid() == 0:  # root writes everywhere: run without the capabilities that let it
        os.chown(closed, 65534, 65534)
        closed.chmod(0o700)
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    else:
        closed.chmod(0o500)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"error: backend 'local': root {closed}/cv is not usable: {closed} is not "
                                    "writable by user "), result.stderr
    assert "give a directory this user may write (--data-dir, GATEWAY_DATA_DIR)" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (closed / "cv").exists()
    # Served, the same one line before anything starts (it came after uvicorn's lines, three times).
    served = subprocess.run([arg for arg in command if arg != "--print-config"] + ["--port", str(free_port())],
                            capture_output=True, text=True, timeout=60, env=env)
    assert served.returncode == 2 and served.stderr == result.stderr, served.stderr

    (tmp_path / "a-file").write_text("x")
    result = serve("--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "a-file" / "cv"),
                   "--print-config")
    assert result.returncode == 2 and (f"root {tmp_path}/a-file/cv is not usable: {tmp_path}/a-file is not a "
                                       "directory (--data-dir, GATEWAY_DATA_DIR)") in result.stderr, result.stderr
    fine = serve("--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "new" / "cv"),
                 "--print-config")
    assert fine.returncode == 0 and not (tmp_path / "new").exists(), fine.stderr


def test_a_host_copied_from_a_url_is_named(tmp_path):
    """--host 127.0.0.1:8086, http://0.0.0.0 or [::1] each ended in "cannot listen on 127.0.0.1:8086:8086: the
    name does not resolve"; "10.0.0.1 " (a stray space in a quoted variable) too."""
    keys = ["--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv")]
    for host, expected in (("127.0.0.1:8086", "'127.0.0.1:8086' has a port in it: give the address alone "
                                              "(127.0.0.1) and the port with --port 8086 (GATEWAY_PORT)"),
                           ("[::1]:8086", "'[::1]:8086' has a port in it: give the address alone (::1)"),
                           ("http://0.0.0.0", "'http://0.0.0.0' is a URL: give the address alone")):
        result = serve(*keys, "--host", host, "--port", str(free_port()))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: invalid setting host (GATEWAY_HOST): {expected}"), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    for host, listens in (("[::1]", "::1"), ("127.0.0.1 ", "127.0.0.1")):
        result = serve(*keys, "--host", host, "--print-config")
        assert result.returncode == 0 and f'"host": "{listens}"' in result.stdout, result.stderr


def test_a_full_store_retry_that_is_not_positive_is_refused(tmp_path):
    result = serve("--print-config", "--data-dir", str(tmp_path / "cv"),
                   env={"GATEWAY_ACCESS_KEY": "a", "GATEWAY_SECRET_KEY": "bbbbbbbb", "GATEWAY_FULL_STORE_RETRY": "0"})
    assert result.returncode == 2, result.stdout
    assert "full_store_retry" in result.stderr and "greater than 0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
