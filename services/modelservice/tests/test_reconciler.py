"""The reconciler against a recorded-API fake of the Kubernetes API server.

No API server exists on this machine (no Docker, no kind), so a loopback HTTP server answers
the requests the reconciler makes with responses shaped like the API server's (lists with a
resourceVersion, watch streams of JSON lines, server-side-apply PATCHes echoing the object) and
records every request. The real `kubernetes` client library talks to it over HTTP. What a fake
cannot show (admission, SSA field ownership, garbage collection by ownerReferences) is left to
the kind suite: see `test_against_a_real_cluster`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from kubernetes import client as k8s
from llmd_modelservice.kube import KubeClient
from llmd_modelservice.reconciler import Reconciler
from llmd_modelservice.render import render
from llmd_modelservice.validation import parse_model_service

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "modelservice"
MS_PATH = "/apis/llm-d.ai/v1alpha1/modelservices"


class FakeAPI:
    """State and request log of the recorded-API fake."""

    def __init__(self) -> None:
        self.modelservices: list[dict[str, Any]] = []
        self.watch_batches: list[list[dict[str, Any]]] = []
        self.existing: dict[str, list[dict[str, Any]]] = {}
        self.missing: set[str] = set()
        self.ready: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def log(self, **req: Any) -> None:
        with self.lock:
            self.requests.append(req)

    def of(self, method: str, contains: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == method and contains in r["path"]]


def make_handler(api: FakeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # watch streams end when the connection closes

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else None

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            api.log(method="GET", path=url.path, query=q)
            if url.path == MS_PATH and q.get("watch") == "true":
                batch = api.watch_batches.pop(0) if api.watch_batches else []
                if not batch:
                    time.sleep(0.05)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                for event in batch:
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()
                return
            if url.path == MS_PATH:
                self._reply(
                    200,
                    {
                        "kind": "ModelServiceList",
                        "apiVersion": "llm-d.ai/v1alpha1",
                        "metadata": {"resourceVersion": "100"},
                        "items": api.modelservices,
                    },
                )
                return
            if url.path in api.missing:
                self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                return
            self._reply(
                200,
                {
                    "kind": "List",
                    "metadata": {"resourceVersion": "100"},
                    "items": api.existing.get(url.path, []),
                },
            )

        def do_PATCH(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = self._body()
            api.log(
                method="PATCH",
                path=url.path,
                query=q,
                content_type=self.headers.get("Content-Type"),
                body=body,
            )
            if url.path.endswith("/status"):
                self._reply(200, body)
                return
            obj = dict(body)
            if obj.get("kind") in ("Deployment", "LeaderWorkerSet"):
                obj["status"] = {"readyReplicas": api.ready.get(obj["metadata"]["name"], 0)}
            self._reply(200, obj)

        def do_DELETE(self) -> None:
            url = urlsplit(self.path)
            api.log(method="DELETE", path=url.path, body=self._body())
            self._reply(200, {"kind": "Status", "status": "Success"})

    return Handler


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeAPI, KubeClient]]:
    api = FakeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    client = KubeClient(k8s.ApiClient(cfg), timeout=5)
    try:
        yield api, client
    finally:
        server.shutdown()
        server.server_close()


def _stored(example: str, *, uid: str = "uid-1", generation: int = 1) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    doc["metadata"].update(uid=uid, generation=generation, resourceVersion="7", namespace="llm")
    return doc


def test_sync_applies_rendered_objects_prunes_and_writes_status(
    fake_api: tuple[FakeAPI, KubeClient],
) -> None:
    api, client = fake_api
    doc = _stored("qwen-pd")
    api.modelservices = [doc]
    api.ready = {"qwen-pd-decode": 1, "qwen-pd-prefill": 1}
    stale = {"metadata": {"name": "qwen-pd-old"}}
    api.existing = {
        "/apis/apps/v1/namespaces/llm/deployments": [
            {"metadata": {"name": "qwen-pd-decode"}},
            stale,
        ]
    }
    api.missing = {"/apis/leaderworkerset.x-k8s.io/v1/namespaces/llm/leaderworkersets"}

    rv = Reconciler(client).sync_all()
    assert rv == "100"

    expected = render(parse_model_service(doc))
    applies = [r for r in api.of("PATCH") if not r["path"].endswith("/status")]
    assert [r["body"]["kind"] + "/" + r["body"]["metadata"]["name"] for r in applies] == [
        o["kind"] + "/" + o["metadata"]["name"] for o in expected
    ]
    for r, obj in zip(applies, expected, strict=True):
        assert r["content_type"] == "application/apply-patch+yaml"
        assert r["query"] == {"fieldManager": "llmd-modelservice", "force": "true"}
        owner = r["body"]["metadata"].pop("ownerReferences")
        assert owner == [
            {
                "apiVersion": "llm-d.ai/v1alpha1",
                "kind": "ModelService",
                "name": "qwen-pd",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert r["body"] == obj, "the reconciler applies exactly what `render` prints"
    assert applies[0]["path"] == "/apis/apps/v1/namespaces/llm/deployments/qwen-pd-decode"
    pool = next(r for r in applies if r["body"]["kind"] == "InferencePool")
    assert (
        pool["path"] == "/apis/inference.networking.k8s.io/v1/namespaces/llm/inferencepools/qwen-pd"
    )
    lists = [r for r in api.of("GET") if "labelSelector" in r["query"]]
    assert {r["query"]["labelSelector"] for r in lists} == {
        "app.kubernetes.io/managed-by=llmd-modelservice,llm-d.ai/modelservice=qwen-pd"
    }
    deletes = api.of("DELETE")
    assert [d["path"] for d in deletes] == ["/apis/apps/v1/namespaces/llm/deployments/qwen-pd-old"]
    (status_req,) = [r for r in api.of("PATCH") if r["path"].endswith("/status")]
    assert (
        status_req["path"] == "/apis/llm-d.ai/v1alpha1/namespaces/llm/modelservices/qwen-pd/status"
    )
    assert status_req["content_type"] == "application/merge-patch+json"
    status = status_req["body"]["status"]
    assert status["observedGeneration"] == 1
    assert status["replicas"] == 3 and status["readyReplicas"] == 2
    assert status["selector"] == "llm-d.ai/model=qwen-pd"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Reconciled"]["status"] == "True" and conds["Reconciled"]["reason"] == "Applied"
    assert conds["Available"]["status"] == "False"
    assert conds["Available"]["message"] == "2/3 replicas ready"


def test_invalid_spec_is_reported_in_status_with_every_error(
    fake_api: tuple[FakeAPI, KubeClient],
) -> None:
    api, client = fake_api
    doc = _stored("sim-small")
    doc["spec"]["replicas"] = -3
    doc["spec"]["engine"]["kind"] = "tgi"
    status = Reconciler(client).reconcile(doc)
    (cond,) = status["conditions"]
    assert cond["type"] == "Reconciled" and cond["status"] == "False"
    assert cond["reason"] == "InvalidSpec"
    assert "spec.replicas" in cond["message"] and "spec.engine.kind" in cond["message"]
    assert [r for r in api.of("PATCH") if not r["path"].endswith("/status")] == []
    assert len(api.of("PATCH", "/status")) == 1


def test_watch_loop_reacts_to_changes_and_relists_on_410(
    fake_api: tuple[FakeAPI, KubeClient],
) -> None:
    api, client = fake_api
    first = _stored("sim-small", generation=1)
    second = _stored("llama-8b", uid="uid-2", generation=1)
    status_only = json.loads(json.dumps(first))
    status_only["metadata"]["resourceVersion"] = "8"
    bumped = json.loads(json.dumps(first))
    bumped["metadata"].update(generation=2, resourceVersion="9")
    bumped["spec"]["replicas"] = 5
    api.modelservices = [first]
    api.watch_batches = [
        [
            {"type": "ADDED", "object": second},
            {"type": "MODIFIED", "object": status_only},  # same generation: no work
            {"type": "MODIFIED", "object": bumped},
            {"type": "DELETED", "object": second},
            {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "code": 410,
                    "reason": "Expired",
                    "message": "too old resource version",
                },
            },
        ]
    ]
    rec = Reconciler(client, resync_seconds=60, watch_timeout_seconds=1)
    stop = threading.Event()
    t = threading.Thread(target=rec.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    lists = lambda: [r for r in api.of("GET", MS_PATH) if r["query"].get("watch") != "true"]  # noqa: E731
    while len(lists()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(5)
    assert len(lists()) >= 2, "a 410 from the watch makes the loop relist"
    watches = [r for r in api.of("GET", MS_PATH) if r["query"].get("watch") == "true"]
    assert watches[0]["query"]["resourceVersion"] == "100"
    deployments = [r["body"] for r in api.of("PATCH", "/deployments/")]
    names_replicas = [(d["metadata"]["name"], d["spec"]["replicas"]) for d in deployments]
    # initial list (sim-small 3), ADDED llama-8b (2), generation bump (sim-small 5), relist.
    assert names_replicas[:3] == [("sim-small", 3), ("llama-8b", 2), ("sim-small", 5)]
    assert len(api.of("DELETE")) == 0, "deletion is left to garbage collection"


def test_against_a_real_cluster() -> None:
    if shutil.which("kind") is None or shutil.which("docker") is None:
        pytest.skip(
            "no Kubernetes API server here (no Docker/kind): server-side apply ownership, "
            "owner-reference garbage collection and CRD admission run in tests/e2e/kind"
        )
    pytest.skip("the kind suite (tests/e2e/kind) runs the reconciler against a real cluster")


def test_reconcile_command_serves_health_and_metrics(
    fake_api: tuple[FakeAPI, KubeClient], tmp_path: Path
) -> None:
    api, client = fake_api
    api.modelservices = [_stored("sim-small")]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "fake", "cluster": {"server": client.api.configuration.host}}
                ],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmd_modelservice.server",
            "reconcile",
            "--kubeconfig",
            str(kubeconfig),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if not ready:
                time.sleep(0.05)
        assert ready, "ready after the first full sync"
        metrics = httpx.get(f"{base}/metrics").text
        assert 'llmd_modelservice_reconciles_total{result="applied"} 1.0' in metrics
        assert any(r["path"].endswith("/deployments/sim-small") for r in api.of("PATCH"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
