"""rclone against a gateway, configured only through RCLONE_CONFIG_GW_* variables (no rclone.conf):
for the tests of the S3 API and of the cluster, which run the client users run."""

from __future__ import annotations

import os
import shutil
import subprocess

INSTALL = "run `make test-deps` (it installs rclone, which the tests start)"
REMOTE = "GW"


def rclone_executable() -> str:
    found = shutil.which("rclone")
    assert found, f"rclone is not installed: {INSTALL}"
    return found


def run_rclone(gateway, *args: str, check: bool = True, timeout: float = 120,
               options: dict[str, str] | None = None, others: dict | None = None) -> subprocess.CompletedProcess:
    """Run rclone with a remote named GW: configured only through RCLONE_CONFIG_GW_* variables.
    ``others``: more remotes, name -> gateway (e.g. {"SRC": another_gateway} for ``SRC:bucket``)."""
    # No AWS_* either: the SDK inside rclone would pick up e.g. AWS_CA_BUNDLE, which it cannot use over http.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "AWS_"))}
    for name, remote in {REMOTE: gateway, **(others or {})}.items():
        settings = {
            "TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": remote.endpoint, "ACCESS_KEY_ID": remote.access_key,
            "SECRET_ACCESS_KEY": remote.secret_key, "FORCE_PATH_STYLE": "true", "REGION": "us-east-1",
        }
        if name == REMOTE:
            settings.update({k.upper(): v for k, v in (options or {}).items()})
        env.update({f"RCLONE_CONFIG_{name}_{key}": value for key, value in settings.items()})
    env["RCLONE_CONFIG"] = os.devnull  # nothing from a user's rclone.conf
    cmd = [rclone_executable(), "--low-level-retries", "1", "--retries", "1", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"rclone {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result
