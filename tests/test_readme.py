"""The README's examples work as printed against a gateway with `make run`'s credentials."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.testing.server import GatewayProcess

README = (Path(__file__).parent.parent / "README.md").read_text()
MAKEFILE = (Path(__file__).parent.parent / "Makefile").read_text()


def make_var(name):
    return re.search(rf"^{name}\s*\?=\s*(\S+)", MAKEFILE, re.M).group(1)


@pytest.fixture(scope="module")
def make_run_gateway(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("readme") / "cv-storage", access_key=make_var("ACCESS_KEY"),
                        secret_key=make_var("SECRET_KEY")) as gw:
        yield gw


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_readme_credentials_match_make_run():
    assert make_var("ACCESS_KEY") in README and make_var("SECRET_KEY") in README
    assert f"{make_var('HOST')}:{make_var('PORT')}" in README


def test_boto3_example(make_run_gateway):
    code = blocks("python")[0].replace("http://127.0.0.1:8086", make_run_gateway.endpoint)
    exec(compile(code, "README.md", "exec"), {})
    s3 = make_run_gateway.client()
    assert s3.get_object(Bucket="faces", Key="cam1/0001.jpg")["ContentType"] == "image/jpeg"


def test_curl_example(make_run_gateway, tmp_path):
    assert shutil.which("curl"), "curl is missing: apt-get install curl"
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    s3 = make_run_gateway.client()
    if "faces" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="faces")
    script = next(b for b in blocks("sh") if "curl" in b).replace("http://127.0.0.1:8086", make_run_gateway.endpoint)
    result = subprocess.run(["bash", "-ec", script.replace("curl ", "curl -sSf ")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy.jpg").read_bytes() == b"\xff\xd8 a photo"
