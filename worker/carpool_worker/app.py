"""The worker's HTTP routes (FastAPI): completions, chat, models, admin limits, health, metrics.

Contract: ``create_app(worker)`` serves a :class:`~carpool_worker.server.Worker`: the OpenAI
routes ``/v1/completions``, ``/v1/chat/completions`` (both routed to an endpoint by the
``X-Carpool-Endpoint`` header) and ``/v1/models``, and the worker's own. Every error is
JSON (``api.error_body``) with a 4xx status that names the problem; 429s carry Retry-After, 405s
carry Allow. The OpenAPI document (``/openapi.json``) lists every status a route answers and the
shapes of the bodies. A client that goes away (mid-stream or while waiting) cancels its request,
which frees its slot at the engine's next step; one that goes away or stalls mid-body is logged
in one line and counted (``carpool_http_requests_dropped_total``). A request that fails in the
engine is answered 500 (or ends its stream with an error event) saying why.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
import weakref
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from carpool_replica.limits import FIELDS as LIMIT_FIELDS
from carpool_replica.limits import MAX_FIELD_VALUE
from carpool_replica.scheduler import Rejected, StaleLimits
from carpool_replica.scheduler import Request as EngineRequest

from . import api, chat
from .api import ApiError, Shape, StopMatcher
from .engine import DoneEvent, TokenEvent
from .limits import LimitsError, parse_limits
from .server import Worker
from .tokenizer import IncrementalDecoder

ENDPOINT_HEADER = "x-carpool-endpoint"
DISCONNECT_POLL_SECONDS = 0.25

log = logging.getLogger(__name__)


class LoopHub:
    """Carries the engine's events to one asyncio loop: each step's events for this loop's
    requests cross threads in one ``call_soon_threadsafe``, and each request's sink (a
    :class:`QueueSink`) is called there, in the engine's order."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def post(self, batch: list) -> None:
        """From the engine thread: one step's [(sink, event), ...]."""
        self.loop.call_soon_threadsafe(self._deliver, batch)

    @staticmethod
    def _deliver(batch: list) -> None:
        for sink, event in batch:
            sink(event)


class QueueSink:
    """A request's engine sink: puts each event on its queue, on the hub's loop."""

    __slots__ = ("hub", "queue")

    def __init__(self, hub: LoopHub, queue: asyncio.Queue):
        self.hub, self.queue = hub, queue

    def __call__(self, event) -> None:
        self.queue.put_nowait(event)


def error_response(status: int, message: str, param=None, headers=None) -> JSONResponse:
    return JSONResponse(api.error_body(status, message, param), status, headers=headers)


async def read_body(request: Request, worker: Worker) -> bytes:
    """The whole body, or ApiError 413 past ``max_body_bytes`` and 408 past
    ``body_timeout_seconds`` (counted as a dropped request).

    Raises ClientDisconnect when the client goes away first.
    """
    limit, timeout = worker.settings.max_body_bytes, worker.settings.body_timeout_seconds
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"the body is larger than {limit} bytes", **CLOSE)
    chunks, size = [], 0
    try:
        # One deadline for the whole body: a client trickling a byte at a time must not hold
        # its connection (and this task) for ever.
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the body is larger than {limit} bytes", **CLOSE)
                chunks.append(chunk)
    except TimeoutError:
        worker.metrics.http_dropped.labels("body_timeout").inc()
        raise ApiError(408, f"the body did not arrive within {timeout:g} s", **CLOSE) from None
    return b"".join(chunks)


# Sent with an answer given before the whole body was read: what is left of it must not be
# read as the next request.
CLOSE = {"Connection": "close"}


def allowed_methods(app: FastAPI, scope) -> set[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.PARTIAL:  # the path matches, the method does not
            methods |= getattr(route, "methods", None) or set()
    return methods


def _error_docs(*statuses: int) -> dict:
    """OpenAPI ``responses`` for error statuses: the JSON error shape, and Retry-After on 429."""
    docs = {}
    for status in statuses:
        doc = {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"schema": api.ERROR_SCHEMA}},
        }
        if status in (429, 503):
            doc["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        docs[status] = doc
    return docs


ERROR_DESCRIPTIONS = {
    400: "The request is malformed; the message names the field.",
    401: "A valid bearer token is required.",
    404: "Unknown endpoint (X-Carpool-Endpoint) or route.",
    408: "The body did not arrive in time.",
    409: "The limits document is older than the one in force.",
    413: "The body is larger than --max-body-bytes.",
    429: "The endpoint's queue is full, or the request waited past maxQueueWaitMilliseconds.",
    500: "The request failed in the engine (it alone); the message says why.",
    503: "The model is loading (or failed to load).",
}


def create_app(worker: Worker, load_on_startup: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        if load_on_startup and not worker.ready:
            worker.load_in_background()
        yield
        worker.close()

    app = FastAPI(title="carpool worker", lifespan=lifespan, docs_url=None, redoc_url=None)
    hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> LoopHub
    created = int(time.time())  # the model object's "created": when this worker began serving

    base_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = base_openapi()
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names the first route on the path only; a path served by one
            # route per method (GET and PUT /admin/limits) must name them all.
            headers = {"Allow": ", ".join(sorted(allowed_methods(app, request.scope)))}
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _exc: ClientDisconnect):
        # The client's own doing, and cheap to repeat: one line, not a traceback.
        client = request.client.host if request.client else "?"
        log.info(
            "%s %s from %s: the client left before sending its whole body",
            request.method,
            request.url.path,
            client,
        )
        worker.metrics.http_dropped.labels("client_disconnected").inc()
        return Response(status_code=499)  # nobody is listening

    @app.exception_handler(Exception)
    async def _unexpected(_req, exc: Exception):
        # A bug: Starlette logs the traceback; the client still gets the JSON error shape.
        return error_response(500, f"internal error: {type(exc).__name__}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req, exc: RequestValidationError):
        return error_response(400, f"invalid request: {exc.errors()}")

    @app.get("/healthz", responses=_error_docs(503))
    async def healthz():
        if worker.load_error:
            return error_response(503, f"model load failed: {worker.load_error}")
        return {"status": "ok"}

    @app.get("/readyz", responses=_error_docs(503))
    async def readyz():
        if not worker.ready:
            return error_response(503, "the model is loading", headers={"Retry-After": "5"})
        ready = {"status": "ready", "limitsVersion": worker.engine.limits.version}
        if worker.profile is not None:  # say so wherever an emulated GPU shows
            ready["emulated"] = f"{worker.profile.model} on {worker.profile.device}"
        return ready

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics():
        return Response(worker.metrics.render(), media_type="text/plain; version=0.0.4")

    def check_admin(request: Request) -> None:
        token = worker.settings.admin_token
        if not token:
            raise ApiError(401, "the admin API is off: start the worker with --admin-token-file")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        # Constant-time: a timing difference must not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(401, "a valid bearer token is required", WWW_Authenticate="Bearer")

    admin = {"security": [{"bearer": []}]}

    @app.get("/admin/limits", responses=_error_docs(401), openapi_extra=admin)
    async def get_limits(request: Request):
        check_admin(request)
        if not worker.ready:
            return worker.initial_limits.as_dict()
        return worker.engine.limits.as_dict()

    @app.put(
        "/admin/limits",
        responses=_error_docs(400, 401, 408, 409, 413, 503),
        openapi_extra=admin | {"requestBody": _json_body(LIMITS_SCHEMA)},
    )
    async def put_limits(request: Request):
        check_admin(request)
        if not worker.ready:
            raise ApiError(503, "the model is loading", **{"Retry-After": "5"})
        body = await read_body(request, worker)
        try:
            doc = parse_limits(api.parse_json(body))
        except LimitsError as exc:
            raise ApiError(400, str(exc)) from exc
        try:
            applied = worker.engine.apply_limits(doc)
        except StaleLimits as exc:
            raise ApiError(409, str(exc)) from exc
        return {"appliedVersion": applied}

    def count_invalid(endpoint: str) -> None:
        if endpoint in worker.engine.limits.endpoints:
            worker.metrics.requests.labels(endpoint, "invalid").inc()

    @app.get("/v1/models", responses={200: {"content": {"application/json": {"schema": MODELS}}}})
    async def models():
        return {"object": "list", "data": [model_card(worker, created)]}

    @app.get(
        "/v1/models/{model}",
        responses={200: {"content": {"application/json": {"schema": MODEL}}}} | _error_docs(404),
    )
    async def model(model: str):
        if model != worker.config.name:
            raise ApiError(404, f"no model {model!r}: this worker serves {worker.config.name!r}")
        return model_card(worker, created)

    @app.post(
        "/v1/completions",
        responses={200: COMPLETION_DOC} | _error_docs(400, 404, 408, 413, 429, 500, 503),
        openapi_extra={
            "parameters": [ENDPOINT_PARAMETER],
            "requestBody": _json_body(
                api.completion_request_schema(worker.max_context, worker.config.vocab_size)
            ),
        },
    )
    async def completions(request: Request):
        return await generate(request, api.parse_completion, api.TEXT_COMPLETION)

    @app.post(
        "/v1/chat/completions",
        responses={200: CHAT_DOC} | _error_docs(400, 404, 408, 413, 429, 500, 503),
        openapi_extra={
            "parameters": [ENDPOINT_PARAMETER],
            "requestBody": _json_body(chat.chat_request_schema(worker.max_context)),
        },
    )
    async def chat_completions(request: Request):
        return await generate(request, chat.parse_chat, chat.CHAT_COMPLETION)

    async def generate(request: Request, parse, shape: Shape):
        """One generating request, parsed by ``parse``, answered in ``shape``."""
        if not worker.ready:
            raise ApiError(503, "the model is loading", **{"Retry-After": "5"})
        endpoint = request.headers.get(ENDPOINT_HEADER) or worker.engine.limits.default_endpoint
        try:
            body = await read_body(request, worker)
            params = parse(body, worker.codec, worker.max_context)
        except ApiError:  # 400, 408, 413: the client's doing
            count_invalid(endpoint)
            raise
        loop = asyncio.get_running_loop()
        hub = hubs.get(loop)
        if hub is None:
            hub = hubs[loop] = LoopHub(loop)
        events: asyncio.Queue = asyncio.Queue()
        req = EngineRequest(
            prompt_ids=params.prompt_ids,
            max_tokens=params.max_tokens,
            endpoint=endpoint,
            arrival=time.monotonic(),
            temperature=params.temperature,
            top_p=params.top_p,
            sink=QueueSink(hub, events),
        )
        try:
            worker.engine.submit(req)
        except Rejected as exc:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
            raise ApiError(exc.status, exc.message, **retry) from exc
        completion = Completion(worker, req, params, events, shape)
        first = await completion.next_event(request)
        if first is None:
            return Response(status_code=499)  # nobody is listening any more
        if isinstance(first, DoneEvent) and first.rejection is not None:
            rej = first.rejection
            raise ApiError(rej.status, rej.message, **{"Retry-After": str(rej.retry_after)})
        if params.stream:
            return StreamingResponse(
                completion.sse(first), media_type="text/event-stream", headers=_NO_BUFFERING
            )
        return await completion.whole(first, request)

    return app


_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def model_card(worker: Worker, created: int) -> dict:
    """The served model as OpenAI's model object, with what this worker adds."""
    card = {
        "id": worker.config.name,
        "object": "model",
        "created": created,
        "owned_by": "carpool",
        "max_model_len": worker.max_context,
    }
    if worker.profile is not None:  # say so wherever an emulated GPU shows
        card["emulated"] = f"{worker.profile.model} on {worker.profile.device}"
    return card


MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by", "max_model_len"],
    "properties": {
        "id": {"type": "string"},
        "object": {"enum": ["model"]},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "max_model_len": {"type": "integer", "description": "Prompt plus output tokens."},
        "emulated": {
            "type": "string",
            "description": "Present when no model runs: the GPU is emulated from this profile.",
        },
    },
}
MODELS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"enum": ["list"]},
        "data": {"type": "array", "minItems": 1, "maxItems": 1, "items": MODEL},
    },
}

ENDPOINT_PARAMETER = {
    "name": "X-Carpool-Endpoint",
    "in": "header",
    "required": False,
    "description": "The endpoint (traffic class); the limits' defaultEndpoint when absent.",
    "schema": {"type": "string"},
}

COMPLETION_DOC = {
    "description": "The completion; with stream=true, server-sent events ending in [DONE].",
    "content": {
        "application/json": {"schema": api.COMPLETION_SCHEMA},
        # One "data:" line per chunk (the JSON object above, less usage), a usage chunk with
        # empty choices when stream_options.include_usage, then "data: [DONE]"; or an error
        # object when the engine fails the request mid-stream.
        "text/event-stream": {},
    },
}

CHAT_DOC = {
    "description": "The chat completion; with stream=true, server-sent events ending in [DONE].",
    "content": {
        "application/json": {"schema": chat.CHAT_COMPLETION_SCHEMA},
        # One "data:" line per chat.completion.chunk (a delta; the first says role "assistant"),
        # a usage chunk with empty choices when stream_options.include_usage, then "data: [DONE]".
        "text/event-stream": {},
    },
}


_LIMIT = {"type": "integer", "minimum": 0, "maximum": MAX_FIELD_VALUE}
_BATCH = _LIMIT | {"minimum": 1}
LIMITS_SCHEMA = {
    "description": "The limits document (docs/limits.md); defaultEndpoint must name an endpoint.",
    "type": "object",
    "required": ["version", "endpoints"],
    "properties": {
        "version": _LIMIT,
        "defaultEndpoint": {"type": "string"},
        "endpoints": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"minLength": 1, "maxLength": 253},
            "additionalProperties": {
                "type": "object",
                "required": list(LIMIT_FIELDS),
                "properties": {f: _LIMIT for f in LIMIT_FIELDS}
                | {"maxBatchSize": _LIMIT | {"minimum": 1}},
                "additionalProperties": False,
            },
        },
    },
}


def _json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# Stands for a chunk's text while its template is made: no other part of a chunk (the id, the
# model's name, the fixed fields) holds control characters, so it occurs once.
_TEXT_MARK = "\x00\x01text\x01\x00"


class Completion:
    """One request's events turned into OpenAI-shaped output."""

    def __init__(
        self, worker: Worker, req: EngineRequest, params, events: asyncio.Queue, shape: Shape
    ):
        self.worker, self.req, self.params, self.events = worker, req, params, events
        self.shape = shape
        self.id = f"{shape.id_prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.decoder = IncrementalDecoder(worker.codec)
        self.stops = StopMatcher(params.stop)
        self.generated = 0
        self.error: str | None = None  # why the engine failed the request, if it did
        self._pending_get: asyncio.Future | None = None
        self._middle: tuple[str, str] | None = None  # a middle chunk's SSE line around its text

    async def next_event(self, request: Request | None):
        """The next engine event, or None when the client disconnected while we waited."""
        if self._pending_get is None and not self.events.empty():
            return self.events.get_nowait()  # already here: no task, no timer
        if request is None:  # nobody to poll: wait for the event itself
            if self._pending_get is not None:
                event, self._pending_get = await self._pending_get, None
                return event
            return await self.events.get()
        if self._pending_get is None:
            self._pending_get = asyncio.ensure_future(self.events.get())
        while True:
            done, _ = await asyncio.wait({self._pending_get}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                event, self._pending_get = self._pending_get.result(), None
                return event
            if request is not None and await request.is_disconnected():
                self.cancel()
                return None

    def cancel(self, reason: str = "cancelled") -> None:
        self.req.cancel(reason)
        self.worker.engine.wake()

    def text_of(self, event) -> tuple[str, str | None]:
        """(text to send, finish reason or None) for one event."""
        if isinstance(event, TokenEvent):
            self.generated += 1
            text, stopped = self.stops.feed(self.decoder.push(event.token_id))
            if stopped:
                self.cancel("stop")
                return text, "stop"
            return text, None
        self.error = event.error
        return self.stops.flush(), event.reason

    def envelope(self, object_: str, choices: list[dict]) -> dict:
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.worker.config.name,
            "choices": choices,
        }

    def chunk(self, text: str, finish_reason: str | None, first: bool) -> dict:
        chunk = self.envelope(
            self.shape.chunk_object, [self.shape.choice(text, finish_reason, first)]
        )
        if self.params.include_usage:  # OpenAI: null on every chunk but the usage one
            chunk["usage"] = None
        return chunk

    def sse_chunk(self, text: str, finish_reason: str | None, first: bool) -> str:
        """One chunk as an SSE event: ``data: `` and the chunk's JSON.

        A chunk in the middle of a stream (text, not the first, no finish reason) differs from
        any other such chunk only in its text, so it is the request's template around the
        text's JSON string: the same bytes as encoding the whole chunk, for a fraction of it.
        """
        if text and not first and finish_reason is None:
            if self._middle is None:
                whole = json.dumps(self.chunk(_TEXT_MARK, None, False))
                head, _, tail = whole.partition(json.dumps(_TEXT_MARK))
                self._middle = (f"data: {head}", f"{tail}\n\n")
            head, tail = self._middle
            return head + json.dumps(text) + tail
        return f"data: {json.dumps(self.chunk(text, finish_reason, first))}\n\n"

    def usage(self) -> dict:
        prompt = len(self.req.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.generated,
            "total_tokens": prompt + self.generated,
        }

    async def whole(self, first, request: Request):
        parts, event = [], first
        while True:
            text, finish = self.text_of(event)
            parts.append(text)
            if finish is not None:
                break
            event = await self.next_event(request)
            if event is None:
                return Response(status_code=499)
        if finish not in ("stop", "length"):
            why = f": {self.error}" if self.error else ""
            return error_response(500, f"the request ended early ({finish}){why}")
        body = self.envelope(self.shape.object, [self.shape.whole_choice("".join(parts), finish)])
        body["usage"] = self.usage()
        return body

    async def sse(self, first):
        event, first_chunk = first, True
        try:
            while True:
                text, finish = self.text_of(event)
                # The first token always gets a chunk, even one whose text is still incomplete
                # (part of a UTF-8 sequence, or a special token): a client's time to first
                # token is then the engine's, not the time to the first printable character.
                if text or finish is not None or first_chunk:
                    yield self.sse_chunk(text, finish, first_chunk)
                    first_chunk = False
                if finish == "error":
                    # The status line is long gone: the stream says why in OpenAI's error shape.
                    failure = api.error_body(500, f"the request failed: {self.error}")
                    yield f"data: {json.dumps(failure)}\n\n"
                if finish is not None:
                    break
                event = await self.next_event(None)
            if self.params.include_usage:
                usage = self.envelope(self.shape.chunk_object, []) | {"usage": self.usage()}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            # Reached on normal end, on a client disconnect (the generator is cancelled or
            # closed) and on errors alike; cancelling a finished request is harmless.
            self.cancel()
