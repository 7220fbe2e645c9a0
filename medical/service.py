"""The study routes of `domainvlm serve`: DICOM in, de-identified, asked about, SR out.

A study arrives as an upload (DICOM files or one zip) or from a configured PACS; it is
de-identified with the server's project key before anything of it is stored, cached, rendered
or logged (`study_intake`). Questions about it are answered on the series rendered the way the
adapter's training images were (`study_views`), through the service's batcher, and the answers
can go back to the PACS as DICOM SR. A study is seen only by the key that sent it, unless the
service shares results; another key gets 404, so ids tell nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from domainvlm.adapters.service import answering
from domainvlm.adapters.service.deps import Service, caller, owner_filter, ready_service, service
from domainvlm.adapters.service.problems import Problem, responses
from domainvlm.adapters.service.security import Caller
from domainvlm.adapters.store import BASE
from domainvlm.medical import study_intake as intake
from domainvlm.medical.study_schemas import (
    ADAPTER,
    SERIES,
    UPLOAD_BODY,
    AskStudy,
    PacsImport,
    PacsList,
    StudyAnswer,
    StudyAnswers,
    StudyOut,
    ViewImage,
    Views,
)
from domainvlm.medical.study_views import Renders, Shown, png, sources

StudyId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="The study's id",
                                   examples=["3f2a9c0e5b1d4e7f8a6b2c9d0e1f2a3b"])]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    import warnings

    intake.clear_incoming(app.state.service.settings.data_dir)
    # highdicom quotes a single-part PatientName (our pseudonyms) in this warning; a patient's
    # name, even pseudonymous, never goes to the log.
    warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the "
                            "intended person name", category=UserWarning)
    yield


router = APIRouter(prefix="/v1/studies", tags=["studies"], lifespan=_lifespan)


# ---------------------------------------------------------------------------------- intake

@router.post("", status_code=201, response_model=StudyOut, openapi_extra=UPLOAD_BODY,
             responses=responses(400, 413, 415, 503), summary="Upload a study (DICOM or .zip)")
async def upload_study(request: Request, who: Annotated[Caller, Depends(caller)]) -> StudyOut:
    """De-identified before it is stored. `curl -H "Authorization: Bearer $KEY" -F
    files=@scan.zip http://127.0.0.1:8000/v1/studies`; errors name a file by its position."""
    svc = service(request)
    key = _project_key(svc)
    with intake.private_folder(svc.settings.data_dir) as work:
        try:
            paths = await intake.receive_files(request.stream(),
                                               request.headers.get("content-type", ""),
                                               work / "upload", svc.settings.max_files)
        except ClientDisconnect:
            raise Problem(400, "the upload ended early; send it again", "incomplete") from None
        study = await run_in_threadpool(_take_upload, svc, key, paths, work, who.name)
    request.state.study_id = study.id
    return study


def _take_upload(svc: Service, key: str, paths: list[Path], work: Path, owner: str) -> StudyOut:
    s = svc.settings
    folder = intake.unpack(paths, work, s.max_files, s.max_unzipped_bytes)
    intake.check_dicom(folder)
    return _publish(svc, key, folder, work, owner, "upload")


@router.get("/pacs", response_model=PacsList, responses=responses(),
            summary="The PACS this service may fetch from and write to")
async def list_pacs(request: Request, _: Annotated[Caller, Depends(caller)]) -> PacsList:
    """Names only: the URLs stay in the server's configuration."""
    return PacsList(pacs=list(service(request).settings.pacs))


@router.post("/pacs", status_code=201, response_model=StudyOut,
             responses=responses(400, 404, 409, 413, 502, 503),
             summary="Import a study from a configured PACS")
async def import_study(body: PacsImport, request: Request,
                       who: Annotated[Caller, Depends(caller)]) -> StudyOut:
    """Fetched over DICOMweb from a PACS named in the server's configuration (a request never
    gives a URL), then de-identified like an upload."""
    svc = service(request)
    url = _pacs_url(svc, body.pacs)
    key = _project_key(svc)
    with intake.private_folder(svc.settings.data_dir) as work:
        raw = work / "upload"
        raw.mkdir()
        await run_in_threadpool(intake.retrieve, url, body.study_instance_uid, raw,
                                svc.settings.max_files)
        study = await run_in_threadpool(_publish, svc, key, raw, work, who.name, "pacs")
    request.state.study_id = study.id
    return study


def _publish(svc: Service, key: str, raw: Path, work: Path, owner: str,
             source: str) -> StudyOut:
    """De-identify `raw`, publish it, then record it (a failed record takes the folder
    back out)."""
    import uuid

    from domainvlm.adapters.service.db import Study

    study_id = uuid.uuid4().hex
    done = intake.deidentify_and_publish(raw, work, svc.settings.studies_dir, study_id, key)
    row = dict(id=study_id, owner=owner, created=datetime.now(UTC), source=source,
               study_uid=done.study_uid, modality=done.modality[:16],
               series=[{"uid": s.uid, "description": s.description, "modality": s.modality,
                        "instances": s.instances} for s in done.series],
               instances=done.instances,
               folder=str(done.folder.relative_to(svc.settings.data_dir)))
    try:
        with svc.sessions() as session, session.begin():
            session.add(Study(**row))
    except BaseException:
        intake.remove_study(done.folder)
        raise
    return _out(row)


def _project_key(svc: Service) -> str:
    """The de-identification key; 503 when the server has none it can use."""
    import logging

    from domainvlm.errors import DomainVLMError
    from domainvlm.medical.deid import DeidConfig
    from domainvlm.medical.keys import read_key_file

    path = svc.settings.project_key_file
    if path is None:
        raise Problem(503, "this server takes no studies: it has no de-identification key; "
                      "start it with --project-key-file FILE (make one with `domainvlm dicom "
                      "keygen FILE`)", "no-project-key")
    try:
        key = read_key_file(path)
        DeidConfig(project_key=key)
    except DomainVLMError as err:
        logging.getLogger("domainvlm.serve").error("project key unusable: %s", err)
        raise Problem(503, "the server's de-identification key cannot be used (see the "
                      "server log); its operator must fix --project-key-file",
                      "no-project-key") from None
    return key


def _pacs_url(svc: Service, name: str | None) -> str:
    configured = svc.settings.pacs
    if not configured:
        raise Problem(409, "this server has no PACS configured; start it with --pacs "
                      "NAME=DICOMWEB_URL", "no-pacs")
    name = name or next(iter(configured))
    if name not in configured:
        raise Problem(404, f"no PACS named {name!r}; configured: {', '.join(configured)}",
                      "no-such-pacs")
    return configured[name]


# ------------------------------------------------------------------------------ the index

@router.get("", response_model=list[StudyOut], responses=responses(), summary="Your studies")
async def list_studies(request: Request, who: Annotated[Caller, Depends(caller)],
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[StudyOut]:
    """Newest first."""
    from sqlalchemy import select

    from domainvlm.adapters.service.db import Study

    owner = owner_filter(request, who)
    query = select(Study).order_by(Study.created.desc()).limit(limit)
    if owner is not None:
        query = query.where(Study.owner == owner)

    def rows() -> list[StudyOut]:
        with service(request).sessions() as session:
            return [_out(_row_dict(row)) for row in session.scalars(query)]

    return await run_in_threadpool(rows)


@router.get("/{study_id}", response_model=StudyOut, responses=responses(404),
            summary="One study")
async def show_study(study_id: StudyId, request: Request,
                     who: Annotated[Caller, Depends(caller)]) -> StudyOut:
    return _out(await _own(request, who, study_id))


@router.delete("/{study_id}", status_code=204, responses=responses(404),
               summary="Delete a study, its files and its answers")
async def delete_study(study_id: StudyId, request: Request,
                       who: Annotated[Caller, Depends(caller)]) -> Response:
    from sqlalchemy import delete

    from domainvlm.adapters.service.db import Study

    row = await _own(request, who, study_id)
    svc = service(request)

    def remove() -> None:
        with svc.sessions() as session, session.begin():
            session.execute(delete(Study).where(Study.id == study_id))
        intake.remove_study(svc.settings.data_dir / row["folder"])

    await run_in_threadpool(remove)
    _renders(request).forget(study_id)
    return Response(status_code=204)


async def _own(request: Request, who: Caller, study_id: str) -> dict[str, Any]:
    """The study's row if `who` may see it; 404 otherwise (also for another key's study)."""
    from domainvlm.adapters.service.db import Study

    request.state.study_id = study_id
    owner = owner_filter(request, who)

    def find() -> dict[str, Any] | None:
        with service(request).sessions() as session:
            row = session.get(Study, study_id)
            return _row_dict(row) if row is not None and owner in (None, row.owner) else None

    found = await run_in_threadpool(find)
    if found is None:
        raise Problem(404, "no study with this id (for this key)", "no-such-study")
    return found


def _row_dict(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in (
        "id", "owner", "created", "source", "study_uid", "modality", "series", "instances",
        "folder")}


def _out(row: dict[str, Any]) -> StudyOut:
    created = row["created"]
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return StudyOut(id=row["id"], study_uid=row["study_uid"], modality=row["modality"],
                    series=row["series"], instances=row["instances"], created=created,
                    source=row["source"])


# ------------------------------------------------------------------------ views and asking

@router.get("/{study_id}/views", response_model=Views, responses=responses(400, 404, 503),
            summary="The images the model will be shown")
async def study_views(study_id: StudyId, request: Request,
                      svc: Annotated[Service, Depends(ready_service)],
                      who: Annotated[Caller, Depends(caller)],
                      adapter: Annotated[str, Query(pattern=ADAPTER)] = "base",
                      series: Annotated[str | None, Query(max_length=64, pattern=SERIES)]
                      = None,
                      view: Annotated[str | None, Query(
                          max_length=500, description="View fields over the adapter's: JSON "
                          "or key=value pairs", examples=["strategy=slabs,count=4"])] = None,
                      ) -> Views:
    """The series (`series`, or the first with a volume) rendered under the adapter's
    training view; each image at `url`."""
    shown, view_from, _ = await _shown(request, svc, who, study_id, adapter, series, view)
    query = urlencode({k: v for k, v in (("adapter", adapter), ("series", shown.series_uid),
                                         ("view", view)) if v})
    return Views(series_uid=shown.series_uid, view=shown.view, view_from=view_from,
                 description=shown.description,
                 images=[ViewImage(index=i, description=caption,
                                   url=f"{router.prefix}/{study_id}/views/{i}.png?{query}")
                         for i, caption in enumerate(shown.captions)])


@router.get("/{study_id}/views/{index}.png", response_class=Response,
            responses={**responses(400, 404, 503), 200: {"content": {"image/png": {}},
                                                         "description": "PNG"}},
            summary="One image the model will be shown")
async def study_view_png(study_id: StudyId, index: Annotated[int, PathParam(ge=0)],
                         request: Request, svc: Annotated[Service, Depends(ready_service)],
                         who: Annotated[Caller, Depends(caller)],
                         adapter: Annotated[str, Query(pattern=ADAPTER)] = "base",
                         series: Annotated[str | None, Query(max_length=64,
                                                             pattern=SERIES)] = None,
                         view: Annotated[str | None, Query(max_length=500)] = None) -> Response:
    shown, _, _ = await _shown(request, svc, who, study_id, adapter, series, view)
    if index >= len(shown.images):
        raise Problem(404, f"image {index} does not exist; this view has "
                      f"{len(shown.images)} (0..{len(shown.images) - 1})", "no-such-image")
    data = await run_in_threadpool(png, shown.images[index])
    return Response(data, media_type="image/png", headers={"Cache-Control": "private"})


@router.post("/{study_id}/ask", response_model=StudyAnswers,
             responses=responses(400, 404, 409, 502, 503), summary="Ask about a study")
async def ask_study(study_id: StudyId, request: Request,
                    body: Annotated[AskStudy, Body()],
                    svc: Annotated[Service, Depends(ready_service)],
                    who: Annotated[Caller, Depends(caller)]) -> StudyAnswers:
    """Each question about the series the views show; `write_sr` also stores every answer
    as a DICOM SR in the default PACS (`sr_uid`; null for an empty answer)."""
    pacs = _pacs_url(svc, None) if body.write_sr else None
    started = time.perf_counter()
    shown, view_from, row = await _shown(request, svc, who, study_id, body.adapter,
                                         body.series_uid, body.view)
    rendered = time.perf_counter()
    given = await answering.ask(svc, who.name, shown.images, body.questions, body.adapter,
                                body.max_new_tokens, study_id=study_id,
                                series_uid=shown.series_uid, view=shown.view)
    request.state.adapter = given.adapter
    sr_uids: list[str | None] = [None] * len(given.ids)
    if pacs is not None:
        sr_uids = await run_in_threadpool(_write_sr, svc, pacs, svc.settings.data_dir /
                                          row["folder"], shown, body.questions, given)
    # total_ms: the whole request (rendering, the model and any SR), not the model's share
    timings = {**given.timings, "render_ms": round((rendered - started) * 1000, 2),
               "total_ms": round((time.perf_counter() - started) * 1000, 2)}
    return StudyAnswers(
        answers=[StudyAnswer(id=i, question=q, answer=a, sr_uid=uid) for i, q, a, uid in
                 zip(given.ids, body.questions, given.answers, sr_uids, strict=True)],
        adapter=given.adapter, base=svc.base(), series_uid=shown.series_uid,
        description=shown.description, view=shown.view, view_from=view_from, timings=timings)


async def _shown(request: Request, svc: Service, who: Caller, study_id: str, adapter: str,
                 series_uid: str | None, view: str | dict[str, Any] | None
                 ) -> tuple[Shown, str, dict[str, Any]]:
    """The series as the model sees it under `adapter`'s view with `view` over it, how that
    view came about, and the study's row."""
    from domainvlm.image_readers import parse_view

    row = await _own(request, who, study_id)
    request.state.adapter = adapter
    series_uid = series_uid or None
    given = parse_view(view) or {}
    request.state.adapter, recorded = await run_in_threadpool(_adapter_view, svc, adapter)
    fields = {**recorded, **given}
    origin = "+".join(n for n, used in (("adapter", recorded), ("given", given)) if used)
    shown = await run_in_threadpool(_renders(request).shown, study_id,
                                    svc.settings.data_dir / row["folder"], row["series"],
                                    series_uid, fields)
    return shown, origin or "default", row


def _adapter_view(svc: Service, adapter: str) -> tuple[str, dict[str, Any]]:
    """The adapter's ref (name@version, for the audit trail) and its training view."""

    views = svc.runtime.views(adapter) or {}
    if adapter == BASE or svc.store is None:
        return adapter, views
    return svc.store.card(adapter).ref, views


def _renders(request: Request) -> Renders:
    state = request.app.state
    if not hasattr(state, "study_renders"):
        state.study_renders = Renders()
    return state.study_renders


def _write_sr(svc: Service, url: str, folder: Path, shown: Shown, questions: list[str],
              given: answering.Given) -> list[str | None]:
    """Each answer as an SR citing the de-identified series it was drawn from, stored in the
    PACS; its UID recorded on the answer's row. 502 when the PACS refuses."""
    from sqlalchemy import update

    from domainvlm.adapters.service.db import Answer
    from domainvlm.medical.errors import PacsError
    from domainvlm.medical.pacs import PacsClient
    from domainvlm.medical.sr import answer_to_sr

    cited = sources(folder, shown.series_uid)
    source = svc.runtime.base_identity.source
    model = Path(source).name if Path(source).is_absolute() else source
    adapter = None if given.adapter == BASE else given.adapter
    reports = [answer_to_sr(q, a, cited, model, adapter) if a.strip() else None
               for q, a in zip(questions, given.answers, strict=True)]
    try:
        PacsClient(url).store([sr for sr in reports if sr is not None])
    except PacsError as err:
        raise Problem(502, f"the answers were given (ids {', '.join(given.ids)}) but the PACS "
                      f"did not store them: {err}", "pacs-failed") from None
    uids = [str(sr.SOPInstanceUID) if sr is not None else None for sr in reports]
    with svc.sessions() as session, session.begin():
        for answer_id, uid in zip(given.ids, uids, strict=True):
            if uid is not None:
                session.execute(update(Answer).where(Answer.id == answer_id).values(sr_uid=uid))
    return uids
