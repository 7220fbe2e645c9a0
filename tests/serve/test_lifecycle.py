"""A served process's life: TLS, CORS when configured, and a graceful stop that answers what
is in flight (a client leaving mid-upload: test_studies.py)."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from server import running_server, stop

from domainvlm.client import Client


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tiny_models, tmp_path_factory):
    from domainvlm.medical.keys import write_key_file

    root = tmp_path_factory.mktemp("lifecycle")
    cert, key = self_signed(root)
    project_key = root / "project.key"
    write_key_file(project_key)
    with running_server(["--model", str(tiny_models("llava")), "--tls-cert", str(cert),
                         "--tls-key", str(key), "--cors-origin", "https://viewer.example",
                         "--project-key-file", str(project_key)], root / "data",
                        scheme="https", ca=cert) as server:
        yield server, cert


def test_tls_serves_https_only(tls_server) -> None:
    server, cert = tls_server
    with Client(server.url, verify=str(cert)) as client:
        assert client.health() == {"status": "ok"}
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/health", timeout=10)  # an unknown certificate is refused
    plain = server.url.replace("https://", "http://")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(plain + "/health", timeout=10)


def test_cors_answers_only_the_configured_origin(tls_server) -> None:
    server, cert = tls_server
    ask = {"Access-Control-Request-Method": "POST"}
    allowed = requests.options(server.url + "/v1/vqa", verify=str(cert), timeout=10,
                               headers={"Origin": "https://viewer.example", **ask})
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    other = requests.options(server.url + "/v1/vqa", verify=str(cert), timeout=10,
                             headers={"Origin": "https://evil.example", **ask})
    assert "access-control-allow-origin" not in other.headers


def test_a_graceful_stop_answers_the_requests_in_flight(tls_server, shapes_data) -> None:
    import json
    import time

    server, cert = tls_server
    row = json.loads(shapes_data["eval"].read_text().splitlines()[0])
    image = shapes_data["eval"].parent / row["image"]
    with Client(server.url, verify=str(cert)) as client:
        client.vqa(image, "Describe the image.", max_new_tokens=4)  # warm
    finished: list[float] = []
    errors: list[Exception] = []

    def ask() -> None:
        try:
            with Client(server.url, verify=str(cert)) as own:  # its connection closes after
                own.vqa(image, "Describe the image.", max_new_tokens=16)
            finished.append(time.monotonic())
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    asking = [threading.Thread(target=ask) for _ in range(10)]  # more than one batch
    for thread in asking:
        thread.start()
    while not finished and not errors:  # the model is at work: stop now, mid-queue
        time.sleep(0.01)
    stopped_at = time.monotonic()
    # uvicorn shuts down on SIGTERM, then re-raises it: the exit says which signal ended it.
    # (It waits for open connections: an idle TLS one that is never closed holds it 30 s.)
    assert stop(server) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log_text()
    for thread in asking:
        thread.join(60)
    assert errors == [] and len(finished) == 10
    assert max(finished) > stopped_at, "nothing was in flight when the stop began"
