"""The real `domainvlm serve` over HTTP: keys, limits, answers, ids, metrics, logs, audit.

One server (uvicorn on 127.0.0.1, a subprocess) on a tiny LLaVA with an adapter store serves
every test here; answers are checked against `domainvlm.answer` on the adapter folders, an
independent path (no server, no runtime, no batcher).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from server import running_server

from domainvlm.client import Client, ServiceError

sys.path.insert(0, str(Path(__file__).parents[1] / "adapters"))
from factory import make_adapter  # noqa: E402

QUESTION = "What colour is the shape?"


def keys_cli(data_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "domainvlm.cli", "serve", "keys", *args,
                           "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(data_dir: Path, name: str, *extra: str) -> str:
    out = keys_cli(data_dir, "add", name, *extra)
    return next(word for word in out.split() if word.startswith("dvk_"))


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory, shapes_data):
    from domainvlm.adapters.store import AdapterStore

    root = tmp_path_factory.mktemp("serve")
    base = tiny_models("llava")
    store = AdapterStore(root / "store")
    folders = {}
    for name, kind, seed in (("a", "lora", 1), ("b", "lora", 2), ("p", "projector", 3)):
        folders[name] = make_adapter(base, root / "made" / name, kind=kind, seed=seed)
        store.add(folders[name], name)
    data_dir = root / "data"
    data_dir.mkdir()
    keys = {"alice": new_key(data_dir, "alice"), "bob": new_key(data_dir, "bob"),
            "slow": new_key(data_dir, "slow", "--rate", "3"),
            "gone": new_key(data_dir, "gone")}
    rows = [json.loads(line) for line in shapes_data["eval"].read_text().splitlines()]
    image = shapes_data["eval"].parent / rows[0]["image"]
    from domainvlm.medical.keys import write_key_file

    project_key = write_key_file(root / "project.key")  # configured in full, as in a hospital
    with running_server(["--model", str(base), "--store", str(root / "store"),
                         "--project-key-file", str(project_key),
                         "--max-request-mb", "1", "--max-batch", "4", "--max-wait-ms", "20"],
                        data_dir) as server:
        yield {"server": server, "keys": keys, "base": base, "folders": folders,
               "image": image, "data_dir": data_dir}


def test_health_is_open_and_every_other_route_needs_a_key(setup) -> None:
    url = setup["server"].url
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
    assert requests.get(url + "/health/ready", timeout=10).status_code == 200
    schema = requests.get(url + "/openapi.json", timeout=10).json()
    probed = 0
    for path, methods in schema["paths"].items():
        if path.startswith("/health"):
            continue
        concrete = path.replace("{ref}", "a@1").replace("{study_id}", "0" * 32) \
            .replace("{index}", "0")
        for method in methods:
            reply = requests.request(method, url + concrete, timeout=30)
            assert reply.status_code == 401, (method, path, reply.status_code)
            assert reply.headers["content-type"] == "application/problem+json"
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["status"] == 401
            probed += 1
    assert probed >= 15
    lacking = [f"{method.upper()} {path}" for path, methods in schema["paths"].items()
               for method, operation in methods.items()
               if not _has_example(operation, schema["components"]["schemas"])]
    assert lacking == [], "operations without an example in the OpenAPI document"
    for bad in ({"Authorization": "Bearer dvk_wrong"}, {"X-API-Key": "dvk_wrong"}):
        assert requests.get(url + "/v1/adapters", headers=bad, timeout=10).status_code == 401
    good = {"X-API-Key": setup["keys"]["bob"]}
    assert requests.get(url + "/v1/adapters", headers=good, timeout=10).status_code == 200


def test_a_revoked_key_is_refused_at_once(setup) -> None:
    client = Client(setup["server"].url, setup["keys"]["gone"])
    client.adapters()
    keys_cli(setup["data_dir"], "revoke", "gone")
    with pytest.raises(ServiceError) as refused:
        client.adapters()
    assert refused.value.status == 401


def test_answers_equal_answer_on_the_adapter_folders_in_mixed_concurrent_batches(setup
                                                                                 ) -> None:
    from domainvlm import answer

    client = Client(setup["server"].url, setup["keys"]["alice"])
    image = setup["image"]
    expected = {"base": answer(setup["base"], image, QUESTION, max_new_tokens=8)}
    for name, folder in setup["folders"].items():
        expected[f"{name}@1"] = answer(folder, image, QUESTION, max_new_tokens=8)
    assert len(set(expected.values())) > 1, "adapters must change answers for this to test"
    plan = ["a@1", "b@1", "p@1", "base"] * 3
    got: dict[int, str] = {}

    def ask(index: int, ref: str) -> None:
        got[index] = client.vqa(image, QUESTION, adapter=ref, max_new_tokens=8).answer

    threads = [threading.Thread(target=ask, args=(i, ref)) for i, ref in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [got[i] for i in range(len(plan))] == [expected[ref] for ref in plan]
    metrics = client.metrics()
    batches = _sample(metrics, "domainvlm_batch_size_count")
    assert batches < _sample(metrics, "domainvlm_batch_size_sum"), "no batch held >1 query"
    assert _sample(metrics, 'domainvlm_answers_total{adapter="p@1"}') >= 3


def test_adapters_load_and_unload_without_a_restart(setup) -> None:
    client = Client(setup["server"].url, setup["keys"]["alice"])
    listed = client.adapters()
    assert [card["name"] for card in listed["adapters"]] == ["a", "b", "p"]
    assert listed["base"]["weights"]
    assert client.load("b@1")["loaded"][-1] == "b@1"
    assert "b@1" not in client.unload("b@1")["loaded"]
    with pytest.raises(ServiceError) as missing:
        client.load("nope@1")
    assert missing.value.status == 404 and "nope" in missing.value.problem["detail"]


def test_rate_limit_per_key(setup) -> None:
    url, key = setup["server"].url, setup["keys"]["slow"]
    statuses = [requests.get(url + "/v1/adapters", headers={"X-API-Key": key}, timeout=30)
                for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert int(statuses[-1].headers["retry-after"]) >= 1
    other = {"X-API-Key": setup["keys"]["bob"]}  # another key is not slowed down
    assert requests.get(url + "/v1/adapters", headers=other, timeout=30).status_code == 200


def test_bodies_over_the_limit_are_refused_with_or_without_a_length(setup) -> None:
    url, key = setup["server"].url, setup["keys"]["alice"]
    big = b"\0" * (2 * 2**20)
    with_length = requests.post(url + "/v1/vqa", headers={"X-API-Key": key}, timeout=30,
                                files=[("image", ("x.png", big))], data={"question": "q"})
    assert with_length.status_code == 413
    assert with_length.headers["content-type"] == "application/problem+json"
    head = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunked = requests.post(url + "/v1/vqa", timeout=30, data=iter([head, *[big[:2**19]] * 4]),
                            headers={"X-API-Key": key,  # a generator: no Content-Length
                                     "Content-Type": "multipart/form-data; boundary=x"})
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413


def test_a_bad_image_is_a_problem_that_names_its_position_not_its_file_name(setup) -> None:
    reply = requests.post(setup["server"].url + "/v1/vqa", timeout=30,
                          headers={"X-API-Key": setup["keys"]["alice"]},
                          files=[("image", ("Doe_John_1961.png", b"not an image"))],
                          data={"question": QUESTION})
    assert reply.status_code == 400
    problem = reply.json()
    assert problem["status"] == 400 and "image 1" in problem["detail"]
    assert "Doe" not in reply.text and problem["request_id"] == reply.headers["x-request-id"]
    assert set(problem) == {"type", "title", "status", "detail", "instance", "request_id"}


def test_request_ids_logs_and_audit_trail(setup) -> None:
    server = setup["server"]
    headers = {"X-API-Key": setup["keys"]["bob"], "X-Request-ID": "trace-123"}
    reply = requests.get(server.url + "/v1/adapters/a@1", headers=headers, timeout=30)
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "trace-123"
    fresh = requests.get(server.url + "/health", timeout=10).headers["x-request-id"]
    assert fresh and fresh != "trace-123"
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["request_id"] == "trace-123"]
    assert mine and mine[-1]["path"] == "/v1/adapters/{ref}" and mine[-1]["key"] == "bob"
    with sqlite3.connect(server.data_dir / "serve.db") as db:
        row = db.execute("select key, method, path, status, adapter from audit_events "
                         "where request_id = 'trace-123'").fetchone()
    assert row == ("bob", "GET", "/v1/adapters/{ref}", 200, None)


def test_starting_beyond_loopback_without_keys_is_refused(tmp_path, tiny_models) -> None:
    done = subprocess.run([sys.executable, "-m", "domainvlm.cli", "serve", "--host", "0.0.0.0",
                           "--model", str(tiny_models("llava")), "--data-dir",
                           str(tmp_path / "empty")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "no API key exists" in done.stderr and "keys add" in done.stderr


def _has_example(node, schemas: dict, seen: frozenset = frozenset()) -> bool:
    """True when `node` (an operation, following `$ref`s) shows an example anywhere."""
    if isinstance(node, dict):
        ref = node.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref not in seen:
            return _has_example(schemas.get(ref), schemas, seen | {ref})
        return ("example" in node or "examples" in node
                or any(_has_example(value, schemas, seen) for key, value in node.items()
                       if key not in {"400", "401", "404", "409", "413", "415", "422", "429",
                                      "500", "502", "503"}))  # the problem shapes
    if isinstance(node, list):
        return any(_has_example(item, schemas, seen) for item in node)
    return False


def _sample(metrics: str, name: str) -> float:
    """The value of the sample named exactly `name` (labels included) in Prometheus text."""
    for line in metrics.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_cors_is_off_unless_configured(setup) -> None:
    preflight = requests.options(setup["server"].url + "/v1/vqa", timeout=10, headers={
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(setup) -> None:
    """A bounded property-based run over every operation of the OpenAPI document."""
    server = setup["server"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", server.url + "/openapi.json",
         "--header", f"Authorization: Bearer {setup['keys']['alice']}",
         "--checks", "not_a_server_error,response_schema_conformance,"
         "content_type_conformance,status_code_conformance",
         "--max-examples", "10", "--seed", "7", "--workers", "1",
         "--request-timeout", "60", "--phases", "examples,coverage,fuzzing",
         "--suppress-health-check", "all", "--warnings", "off"],
        capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-6000:]
    assert "No issues found" in done.stdout or "passed" in done.stdout.lower()
