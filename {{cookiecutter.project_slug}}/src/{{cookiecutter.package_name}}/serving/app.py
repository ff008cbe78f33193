"""The application: its endpoints, request checks and the access log. `Front`, a thin ASGI layer,
answers JSON predictions itself and passes everything else to the FastAPI app, which documents
every endpoint (/docs, /openapi.json).

Concurrent requests are queued and answered by one forward pass per batch: a single inference
thread takes everything that queued while the previous pass ran (up to `max_batch_size` samples,
optionally waiting `max_wait_ms` for more), so a lone request never waits and a busy server runs
full batches. The model's task shapes the API: the request schema, the checks and their one-line
4xx reasons derive from its input spec, and labels are its class names. A model failure is a 500
whose request id also appears in the log.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import numpy as np
import torch
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from ..config import ServeConfig
from ..errors import UserError, one_line
from ..predict import Prediction, Predictor, file_types, named_samples
from ..tasks.base import InputSpec
from .batcher import ClientDisconnected, MicroBatcher, Overloaded
from .guard import MULTIPART_ALLOWANCE, BodyGuard, Busy, DecodePool, header
from .metrics import create_metrics, mark_process_dead

log = logging.getLogger("{{ cookiecutter.package_name }}.serve")
DESCRIPTION = "{{ cookiecutter.description }}"


class ClientError(Exception):
    """A request the client must change; becomes a 4xx with `detail` as the one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, one_line(detail)  # an uploaded file's name can hold anything


# --- the API's documented shapes (requests are parsed by hand for one-line errors) ----------------


class PredictResponse(BaseModel):
    predictions: list[int] = Field(description="the predicted class index of each input, in input order")
    labels: list[str] = Field(description="the predicted class name of each input")
    probabilities: list[list[float]] = Field(description="the class probabilities of each input")


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = None


def request_schema(spec: InputSpec, limit: int) -> dict:
    """The /predict body, derived from the task's input spec."""
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": limit,
                "items": spec.json_schema(),
                "description": f"each sample {spec.sample_text()}, {spec.range_text()}: {spec.description}",
            }
        },
    }


ERRORS = {code: {"model": ErrorResponse} for code in (400, 408, 413, 415, 422, 500, 503)}


# --- request parsing -----------------------------------------------------------------------------


BODY_SHAPE = 'the body must be a JSON object {"inputs": [sample, ...]}'


def body_decoder(spec: InputSpec) -> msgspec.json.Decoder:
    """The /predict body's decoder, typed by the task's sample shape: numbers nested exactly as the
    shape (never strings, booleans or nulls), no other keys. It checks in C what a per-element Python
    walk would, with the place of the first mistake; the values' range is checked afterwards."""
    sample: Any = float
    for size in reversed(spec.shape):
        sample = Annotated[list[sample], msgspec.Meta(min_length=size, max_length=size)]
    body = msgspec.defstruct("PredictBody", [("inputs", list[sample])], forbid_unknown_fields=True)
    return msgspec.json.Decoder(body)


def parse_inputs(
    body: bytes, config: ServeConfig, spec: InputSpec, decoder: msgspec.json.Decoder
) -> np.ndarray:
    try:
        inputs = decoder.decode(body).inputs
    except msgspec.ValidationError as err:
        problem, _, where = str(err).partition(" - at `$")
        if where.startswith(".inputs["):  # the first wrong value or list, e.g. `$.inputs[0][3]`
            expected = f"inputs must be a list of samples, each {spec.sample_text()}"
            raise ClientError(422, f"{expected} ({where.rstrip('`')[1:]}: {problem})") from None
        raise ClientError(422, f"{BODY_SHAPE} ({problem})") from None
    except (msgspec.DecodeError, RecursionError) as err:  # RecursionError: nesting deeper than C allows
        raise ClientError(400, f"malformed JSON: {str(err) or 'nested too deeply'}") from None
    if not inputs:
        raise ClientError(422, "inputs is empty: send at least one sample")
    if len(inputs) > config.max_request_samples:
        raise ClientError(
            413, f"{len(inputs)} samples is over the limit of {config.max_request_samples} per request"
        )
    try:
        return spec.validate(np.array(inputs, dtype=np.float64), "inputs")
    except UserError as err:
        raise ClientError(422, str(err)) from None


async def read_body(receive, limit: int) -> bytes:
    """The request body, read from ASGI `receive` (BodyGuard, in front, already bounds its size and
    time; the limit here keeps this correct without it)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client disconnected while sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def response_for(predictions: list[Prediction]) -> Response:
    """The predictions as JSON, encoded directly: the documented `PredictResponse` shape, without a
    second validation pass through pydantic for data the server built itself."""
    body = {
        "predictions": [p.label for p in predictions],
        "labels": [p.name for p in predictions],
        "probabilities": [p.probabilities for p in predictions],
    }
    return Response(msgspec.json.encode(body), media_type="application/json")


def error_response(err: Exception, request_id: str | None) -> Response:
    """The answer to a request that failed for a reason the client can act on, in either path."""
    if isinstance(err, ClientDisconnected):  # nginx's "client closed request": never sent, but logged
        return Response(status_code=499)
    status, headers = (err.status, None) if isinstance(err, ClientError) else (503, {})
    if isinstance(err, Overloaded):
        headers = {"Retry-After": str(err.retry_after)}
    body = msgspec.json.encode({"detail": getattr(err, "detail", str(err)), "request_id": request_id})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


ANSWERED = (ClientError, Overloaded, ClientDisconnected)  # what error_response answers


class JsonPredictions:
    """POST /predict with a JSON body: the endpoint behind both the FastAPI route (which documents
    it) and Front's direct path."""

    def __init__(self, config: ServeConfig, spec: InputSpec, state: dict) -> None:
        self.config, self.spec, self.state = config, spec, state
        self.decoder = body_decoder(spec)

    async def answer(self, scope, receive) -> Response:
        content_type = header(scope, b"content-type")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise ClientError(415, f"content type {content_type or '(none)'!r} is not application/json")
        body = await read_body(receive, self.config.max_body_bytes)
        samples = parse_inputs(body, self.config, self.spec, self.decoder)
        return response_for(await self.state["batcher"](samples, receive))

    async def __call__(self, scope, receive, send) -> None:
        """Plain ASGI: FastAPI's middleware, routing and request objects cost more per request than
        everything else the server does on the event loop for a small prediction."""
        try:
            response = await self.answer(scope, receive)
        except ANSWERED as err:
            response = error_response(err, scope["state"]["request_id"])
        await response(scope, receive, send)


# --- the application -----------------------------------------------------------------------------


def request_ids():
    """Unique request ids, cheaply: a random prefix per process and a counter (uuid4 per request
    costs a system call for 16 random bytes)."""
    prefix = uuid.uuid4().hex[:16]
    return (f"{prefix}{n:08x}" for n in itertools.count())


class Front:
    """The server's outermost layer, ahead of FastAPI: request ids, body limits (BodyGuard), the
    structured access log, request metrics, and a 500 with the request id for anything that escapes a
    handler. JSON predictions go from here straight to their endpoint; everything else to FastAPI.
    Middleware added to the FastAPI app therefore never sees POST /predict: add such layers here."""

    def __init__(
        self, api: FastAPI, predictions: JsonPredictions, config: ServeConfig, metrics: dict
    ) -> None:
        self.api, self.metrics, self.ids = api, metrics, request_ids()
        guard = functools.partial(
            BodyGuard,
            default_limit=config.max_body_bytes,
            limits={"/predict/file": config.max_body_bytes + MULTIPART_ALLOWANCE},
            timeout_s=config.client_timeout_s,
        )
        self.direct, self.routed = guard(predictions), guard(api)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # the lifespan: the model loads and the batcher starts in FastAPI's
            await self.api(scope, receive, send)
            return
        request_id = header(scope, b"x-request-id") or next(self.ids)
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [0]  # 0 until the response starts
        direct = scope["path"] == "/predict" and scope["method"] == "POST"

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await (self.direct if direct else self.routed)(scope, receive, send_with_id)
        except Exception:
            log.exception(json.dumps({"event": "error", "request_id": request_id, "path": scope["path"]}))
            if not status[0]:  # nothing sent yet: the client still gets an answer
                body = {"detail": "internal error", "request_id": request_id}
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        route = scope.get("route")
        path = "/predict" if direct else route.path if route is not None else "other"
        self.record(scope, path, status[0], time.perf_counter() - started)

    def record(self, scope, path: str, status: int, elapsed: float) -> None:
        self.metrics["requests"].labels(path, str(status)).inc()
        self.metrics["latency"].labels(path).observe(elapsed)
        client = scope.get("client")
        line = {"event": "request", "request_id": scope["state"]["request_id"], "method": scope["method"]}
        line.update(path=scope["path"], status=status, ms=round(elapsed * 1000, 2))
        log.info(json.dumps({**line, "client": client[0] if client else None}))


def create_app(config: ServeConfig) -> Front:
    """The app for the model at `config.model_path`; its task shapes the API (inputs, schema, labels)."""
    metrics, registry = create_metrics()  # every worker's, under `serve`
    predictor = Predictor(config.model_path, config.device, config.task or None)
    state: dict = {}  # the batcher, while the app runs
    summary = (predictor.task.__doc__ or predictor.task_name).strip().splitlines()[0]
    classes = ", ".join(predictor.task.class_names)
    api = FastAPI(
        title="{{ cookiecutter.project_name }}",
        description=f"{DESCRIPTION} Task `{predictor.task_name}`: {summary} Classes: {classes}.",
        version="1.0",
        lifespan=lifespan(config, predictor, metrics, state),
    )
    predictions = JsonPredictions(config, predictor.task.input_spec, state)
    add_error_handlers(api)
    add_probes(api, config, predictor, state, registry)
    add_predictions(api, config, predictor, predictions)
    return Front(api, predictions, config, metrics)


def lifespan(config: ServeConfig, predictor: Predictor, metrics: dict, state: dict):
    @asynccontextmanager
    async def run(app: FastAPI):
        shape = predictor.task.input_spec.shape
        for size in range(1, config.max_batch_size + 1):  # the kernels for every batch shape, before traffic
            predictor.predict(np.zeros((size, *shape), dtype=np.float32))
        # The model, torch and the app are long-lived: keeping them out of the collector's full scans
        # takes tens of milliseconds of pauses off the tail latency (p99 56 ms -> 1.4 ms measured).
        gc.collect()
        gc.freeze()
        batcher = MicroBatcher(predictor.predict, config, metrics)
        batcher.start()
        state.update(batcher=batcher)
        ready = {"event": "ready", "model": config.model_path, "task": predictor.task_name}
        log.info(json.dumps({**ready, "device": str(predictor.device)}))
        yield
        await batcher.stop()
        state.clear()
        mark_process_dead()

    return run


def add_probes(app: FastAPI, config: ServeConfig, predictor: Predictor, state: dict, registry) -> None:
    @app.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get(
        "/ready",
        summary="Readiness: the model is loaded and no request was shed for load in the last second",
        responses={503: {"model": ErrorResponse}},
    )
    async def ready() -> JSONResponse:
        if "batcher" not in state:
            return JSONResponse({"detail": "model not loaded"}, status_code=503)
        shedding = state["batcher"].shedding()  # reads two attributes: never waits on the queue
        if shedding:
            return JSONResponse({"detail": f"shedding load: {shedding}"}, status_code=503)
        body = {"status": "ready", "task": predictor.task_name, "device": str(predictor.device)}
        worker = {"pid": os.getpid(), "threads": torch.get_num_threads()}  # which worker answered
        return JSONResponse({**body, "model": config.model_path, **worker})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def add_predictions(
    app: FastAPI, config: ServeConfig, predictor: Predictor, predictions: JsonPredictions
) -> None:
    task, spec, state = predictor.task, predictor.task.input_spec, predictions.state
    uploads = DecodePool()  # image and .npy uploads, decoded on its threads
    body = {"application/json": {"schema": request_schema(spec, config.max_request_samples)}}

    @app.post(
        "/predict",
        summary=f"Predict a batch of {spec.shape_text()} samples",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": body}},
    )
    async def predict(request: Request) -> Response:
        # Front answers these ahead of FastAPI; this route documents them (and answers alike if reached).
        return await predictions.answer(request.scope, request.receive)

    @app.post(
        "/predict/file",
        summary=f"Predict the samples in one uploaded file ({file_types(task)})",
        response_model=PredictResponse,
        responses=ERRORS,
    )
    async def predict_file(request: Request, file: UploadFile) -> Response:
        data = await file.read(config.max_body_bytes + 1)
        if len(data) > config.max_body_bytes:
            raise ClientError(413, f"file is over the limit of {config.max_body_bytes} bytes")
        name = file.filename or "upload"
        suffix = os.path.splitext(name)[1].lower()
        try:  # decoded off the event loop: a large image must not stall every other request
            named = await uploads.run(
                named_samples, data, name, task, suffix if suffix in (".npy", *task.file_types) else None
            )
        except UserError as err:
            raise ClientError(422, str(err)) from None
        except Busy as err:
            raise state["batcher"].shed("decode", str(err)) from None
        if len(named) > config.max_request_samples:
            raise ClientError(413, f"{len(named)} samples is over the limit of {config.max_request_samples}")
        samples = np.stack([sample for _, sample in named])
        return response_for(await state["batcher"](samples, request.receive))


def add_error_handlers(app: FastAPI) -> None:
    for error in ANSWERED:

        @app.exception_handler(error)
        async def answered(request: Request, err: Exception) -> Response:
            return error_response(err, request.state.request_id)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse({"detail": detail, "request_id": request.state.request_id}, status_code=422)
