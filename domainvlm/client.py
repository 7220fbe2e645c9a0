"""A Python client of `domainvlm serve`: the same verbs as the REST API, problems as errors.

Example::

    from domainvlm.client import Client

    with Client("http://127.0.0.1:8000", key="dvk_...") as client:
        print(client.vqa("scene.png", "What colour is the circle?", adapter="shapes@1").answer)
        study = client.upload_study(["scan/1.dcm", "scan/2.dcm"])  # or one .zip
        print(client.ask(study["id"], ["Is there a nodule?"], adapter="chest-ct@1"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from domainvlm.errors import DomainVLMError


class ServiceError(DomainVLMError, RuntimeError):
    """The service answered with an error: `status` and its RFC 9457 `problem` body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        detail = problem.get("detail") or problem.get("title") or "no detail"
        super().__init__(f"HTTP {status}: {detail} (request {problem.get('request_id')})")


class Client:
    """Calls one service with one API key (None: a service without keys, on loopback).
    `verify`: False, or a CA bundle that signs a private certificate."""

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 120.0,
                 verify: bool | str = True) -> None:
        import requests

        self.url, self.timeout, self.verify = url.rstrip("/"), timeout, verify
        self._http = requests.Session()
        if key:
            self._http.headers["Authorization"] = f"Bearer {key}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # operations ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def ready(self) -> dict[str, Any]:
        return self._call("GET", "/health/ready")

    def metrics(self) -> str:
        return self._call("GET", "/metrics", raw=True).decode()

    # adapters -----------------------------------------------------------------------------
    def adapters(self) -> dict[str, Any]:
        """The base, every adapter's card and what is loaded."""
        return self._call("GET", "/v1/adapters")

    def adapter(self, ref: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/adapters/{ref}")

    def load(self, ref: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/adapters/{ref}/load")

    def unload(self, ref: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/adapters/{ref}/unload")

    # plain images -------------------------------------------------------------------------
    def vqa(self, images: str | Path | Sequence[str | Path], question: str, *,
            adapter: str = "base", max_new_tokens: int = 32) -> SimpleNamespace:
        """The answer about image files; `.answer`, `.adapter`, `.timings`, `.id`."""
        paths = [images] if isinstance(images, str | Path) else list(images)
        with ExitStack() as stack:
            files = [("image", (Path(p).name, stack.enter_context(open(p, "rb"))))
                     for p in paths]
            data = {"question": question, "adapter": adapter,
                    "max_new_tokens": str(max_new_tokens)}
            return SimpleNamespace(**self._call("POST", "/v1/vqa", files=files, data=data))

    # studies ------------------------------------------------------------------------------
    def upload_study(self, paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
        """Upload DICOM files (or one .zip) as one study; de-identified by the server."""
        items = [paths] if isinstance(paths, str | Path) else list(paths)
        with ExitStack() as stack:
            files = [("files", (f"part-{n}{'.zip' if str(p).endswith('.zip') else '.dcm'}",
                                stack.enter_context(open(p, "rb"))))
                     for n, p in enumerate(items, start=1)]  # names never leave: they may hold PHI
            return self._call("POST", "/v1/studies", files=files)

    def study_from_pacs(self, study_instance_uid: str, *, pacs: str | None = None
                        ) -> dict[str, Any]:
        body: dict[str, Any] = {"study_instance_uid": study_instance_uid}
        if pacs:
            body["pacs"] = pacs
        return self._call("POST", "/v1/studies/pacs", json=body)

    def studies(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/studies")

    def study(self, study_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/studies/{study_id}")

    def delete_study(self, study_id: str) -> None:
        self._call("DELETE", f"/v1/studies/{study_id}", raw=True)

    def views(self, study_id: str, *, adapter: str = "base", series: str | None = None
              ) -> dict[str, Any]:
        """The images the model would see for `adapter` (its training view by default)."""
        return self._call("GET", f"/v1/studies/{study_id}/views",
                          params=_params(adapter=adapter, series=series))

    def view_png(self, study_id: str, index: int, *, adapter: str = "base",
                 series: str | None = None) -> bytes:
        return self._call("GET", f"/v1/studies/{study_id}/views/{index}.png", raw=True,
                          params=_params(adapter=adapter, series=series))

    def ask(self, study_id: str, questions: str | Sequence[str], *, adapter: str = "base",
            series_uid: str | None = None, view: dict[str, Any] | None = None,
            write_sr: bool = False, max_new_tokens: int = 32) -> dict[str, Any]:
        """Answers about a study, with the series, view and timings used."""
        body = {"questions": [questions] if isinstance(questions, str) else list(questions),
                "adapter": adapter, "series_uid": series_uid, "view": view,
                "write_sr": write_sr, "max_new_tokens": max_new_tokens}
        return self._call("POST", f"/v1/studies/{study_id}/ask", json=body)

    # --------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        # verify per request: a session's verify loses to $REQUESTS_CA_BUNDLE in requests
        response = self._http.request(method, self.url + path, timeout=self.timeout,
                                      verify=self.verify, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except json.JSONDecodeError:
                problem = {"detail": response.text[:200]}
            raise ServiceError(response.status_code, problem)
        return response.content if raw else response.json()


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
