"""What a newcomer meets running the gateway from the README (`make run`, Ctrl-C, HOST=0.0.0.0): real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from gateway.testing.server import free_port


def env_without_gateway_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def start_serve(*args: str) -> tuple[subprocess.Popen, list[str]]:
    """`python -m gateway serve ...` with SIGINT as a terminal's foreground process has it (a test run
    started in the background inherits it ignored, and Python then leaves it ignored)."""
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env_without_gateway_settings(),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if not line or "Uvicorn running on" in line:
            break
    assert process.poll() is None and "Uvicorn running on" in seen[-1], "".join(seen)
    time.sleep(0.5)  # uvicorn logs that line just before it counts as started (a signal before: the start-up's)
    return process, seen


def test_ctrl_c_stops_the_gateway_cleanly_with_status_0(tmp_path):
    """uvicorn stops cleanly on SIGINT and then raises it again: click printed "Aborted!" and the gateway
    exited 1 after its clean shutdown, so Ctrl-C of `make run` ended in "make: *** [run] Error 1"."""
    process, seen = start_serve("--port", str(free_port()), "--data-dir", str(tmp_path / "cv"),
                                "--access-key", "a", "--secret-key", "b")
    try:
        process.send_signal(signal.SIGINT)
        output = "".join(seen) + process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Application shutdown complete" in output, output
    assert "Aborted!" not in output and "Traceback" not in output, output
    assert process.returncode == 0, output


def test_published_secrets_cover_the_makefile_and_the_deploy_example():
    """The warning below knows the secrets this repository prints: keep them in step with it."""
    import re
    import tomllib
    from pathlib import Path

    from gateway.config import PUBLISHED_SECRETS

    root = Path(__file__).parent.parent
    make_secret = re.search(r"^SECRET_KEY\s*\?=\s*(\S+)", (root / "Makefile").read_text(), re.M).group(1)
    example = tomllib.loads((root / "deploy" / "gateway.toml").read_text())
    assert {make_secret, example["secret_key"], *example["credentials"].values()} <= PUBLISHED_SECRETS


def test_listening_beyond_this_host_with_the_readme_secret_warns(tmp_path):
    """`make run HOST=0.0.0.0` (and deploy/gateway.toml as shipped) served every object to the network with
    credentials printed in the README, without a word."""
    from pathlib import Path

    deploy_example = (Path(__file__).parent.parent / "deploy" / "gateway.toml").read_text()
    config = tmp_path / "gateway.toml"
    config.write_text(deploy_example.replace("/var/lib/cv-storage", str(tmp_path / "cv")))
    keys = ["--access-key", "cvgateway", "--secret-key", "cvgateway-secret-key", "--data-dir", str(tmp_path / "cv")]
    for args, warned in ((["--host", "0.0.0.0", *keys], "access key cvgateway:"),
                         (["--config", str(config)], "access keys cvgateway, reporting:"),
                         (["--host", "127.0.0.1", *keys], None),
                         (["--host", "0.0.0.0", "--access-key", "cvgateway", "--secret-key", "an-own-secret-123",
                           "--data-dir", str(tmp_path / "cv")], None)):
        result = subprocess.run([sys.executable, "-m", "gateway", "serve", *args, "--print-config"],
                                capture_output=True, text=True, timeout=60, env=env_without_gateway_settings())
        assert result.returncode == 0, result.stderr
        if warned:
            assert "warning: listening on 0.0.0.0, reachable from other machines, with the example secret key" \
                in result.stderr and warned in result.stderr, (args, result.stderr)
            assert "Set your own secret" in result.stderr and "make run SECRET_KEY=" in result.stderr
        else:
            assert "warning" not in result.stderr, (args, result.stderr)


def test_make_run_prints_a_mount_line_that_works(tmp_path):
    """`make run` starts the gateway with a local-read socket and prints the `gateway mount` line
    for this machine: run as printed (another mount point), it mounts and reads locally."""
    import json
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).parent.parent
    port = free_port()
    make = subprocess.Popen(["make", "-s", "run", f"PORT={port}", f"DATA={tmp_path}/cv"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_without_gateway_settings(), start_new_session=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = False
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (seen and "Uvicorn running on" in seen[-1]):
            line = make.stdout.readline()
            assert line, "make run ended:\n" + "".join(seen)
            seen.append(line)
        output = "".join(seen)
        printed = re.search(r"FUSE mount:\s+(.*?)\\\n\s+(.*?)\n", output)
        assert printed, output
        words = shlex.split(printed[1] + printed[2])
        env = env_without_gateway_settings()
        env.update(w.split("=", 1) for w in words if re.match(r"^GATEWAY_\w+=", w))
        command = [w for w in words if not re.match(r"^GATEWAY_\w+=", w)]
        assert command[1:3] == ["mount", f"http://127.0.0.1:{port}"] and "/mnt/cv" in command, command
        command[command.index("/mnt/cv")] = str(mountpoint)
        from gateway.testing.server import GatewayProcess

        client = GatewayProcess(port=port, access_key=env["GATEWAY_ACCESS_KEY"],
                                secret_key=env["GATEWAY_SECRET_KEY"]).client()
        client.create_bucket(Bucket="newcomer")
        body = os.urandom(3 * 1024 * 1024)
        client.put_object(Bucket="newcomer", Key="video.bin", Body=body)
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        mounted = True
        assert (mountpoint / "newcomer" / "video.bin").read_bytes() == body
        stats = json.loads((mountpoint / ".cv-gateway-stats").read_text())["requests"]
        assert stats.get("local_reads") == 1, stats
    finally:
        if mounted:
            subprocess.run(["fusermount3", "-u", str(mountpoint)], timeout=30)
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    assert f"--local-socket {tmp_path}/cv-{port}.sock" in output, output
    assert not (tmp_path / f"cv-{port}.sock").exists(), "the socket was left behind"
