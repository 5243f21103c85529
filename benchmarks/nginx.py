"""nginx as the reference server: one worker on the server core, its own temp config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

from .procs import SERVER_CORE, children, free_port, pinned, wait_port

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile {sendfile};
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 60;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """nginx serving ``root`` as plain files (``/bucket/key``), with sendfile on or off.

    keepalive_requests is raised so nginx, like the gateway, keeps a connection for the whole
    round; otherwise wrk would reconnect every 1,000 requests and nginx would pay for it.
    """

    def __init__(self, root: str, sendfile: bool):
        if not shutil.which("nginx"):
            raise RuntimeError("nginx is not installed: run `make test-deps` (Debian package nginx)")
        self.root = root
        self.sendfile = sendfile
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="bench-nginx-")
        self.process: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        return f"nginx (sendfile {'on' if self.sendfile else 'off'})"

    def start(self) -> "Nginx":
        # As root, the worker would drop to "nobody" and could not enter the benchmark's temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        config = os.path.join(self.tmp, "nginx.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(user=user, tmp=self.tmp, sendfile="on" if self.sendfile else "off",
                                  port=self.port, root=self.root))
        self.process = subprocess.Popen(
            pinned(SERVER_CORE, ["nginx", "-p", self.tmp, "-c", config, "-e", os.path.join(self.tmp, "error.log")]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            wait_port(self.port, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.error_log()}") from None
        return self

    def pids(self) -> list[int]:
        """The worker(s): the master only supervises, so the CPU per request is the worker's."""
        return children(self.process.pid) or [self.process.pid]

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no error log)"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)
