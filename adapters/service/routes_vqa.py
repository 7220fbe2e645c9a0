"""Plain visual question answering: images and a question in, the answer out (no DICOM)."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from domainvlm.adapters.service.answering import ask
from domainvlm.adapters.service.deps import Service, caller, ready_service
from domainvlm.adapters.service.problems import Problem, responses
from domainvlm.adapters.service.security import Caller

router = APIRouter(prefix="/v1", tags=["vqa"])
MAX_IMAGES = 16


class Timings(BaseModel):
    queue_ms: float
    model_ms: float
    total_ms: float


class VqaAnswer(BaseModel):
    id: str
    answer: str
    adapter: str
    base: str
    timings: Timings

    model_config = {"json_schema_extra": {"examples": [{
        "id": "5f0c...", "answer": "red", "adapter": "shapes@1", "base": "nano",
        "timings": {"queue_ms": 3.1, "model_ms": 58.0, "total_ms": 61.5}}]}}


@router.post("/vqa", response_model=VqaAnswer, responses=responses(400, 404, 409, 413, 503),
             summary="Ask about images (PNG, JPEG, ...)")
async def vqa(request: Request,
              image: Annotated[list[UploadFile], File(description="One or more images, "
                                                      "shown with the question in order")],
              question: Annotated[str, Form(min_length=1, max_length=2000,
                                            examples=["What colour is the circle?"])],
              svc: Annotated[Service, Depends(ready_service)],
              who: Annotated[Caller, Depends(caller)],
              adapter: Annotated[str, Form(max_length=100, examples=["base", "shapes@1"])]
              = "base",
              max_new_tokens: Annotated[int, Form(ge=1)] = 32) -> VqaAnswer:
    """`curl -H "Authorization: Bearer $KEY" -F image=@scene.png -F question="What colour is
    the circle?" -F adapter=shapes@1 http://127.0.0.1:8000/v1/vqa`"""
    if len(image) > MAX_IMAGES:
        raise Problem(422, f"{len(image)} images; send at most {MAX_IMAGES}", "invalid-request")
    request.state.adapter = adapter
    images = [await run_in_threadpool(_open, await upload.read(), number)
              for number, upload in enumerate(image, start=1)]
    given = await ask(svc, who.name, images, [question], adapter, max_new_tokens)
    request.state.adapter = given.adapter
    return VqaAnswer(id=given.ids[0], answer=given.answers[0], adapter=given.adapter,
                     base=svc.settings.model, timings=Timings(**given.timings))


def _open(data: bytes, number: int):
    """The upload as an RGB image; Problem 400 (naming its position, not its file name)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise Problem(400, f"image {number} is not an image Pillow can read "
                      f"({type(err).__name__}); send PNG or JPEG", "bad-image") from None
