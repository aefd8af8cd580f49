"""The Access service's face API over HTTP (FastAPI) and gRPC: verify and identify.

HTTP, JSON bodies with the photo base64-encoded (a gate sends one small face chip per call):
    POST /v1/face/verify    {"userId": "...", "photo": "<base64>"}
        -> {"match": bool, "similarity": float|null, "threshold": float, "modelVersion": "x.y.z"}
    POST /v1/face/identify  {"photo": "<base64>"}
        -> {"userId": str|null, "similarity": float, "threshold": float, "modelVersion": "x.y.z"}
    400: the photo is not base64 or not an image; 401: bad token; 503: no gallery for the version
    that embedded the probe (only possible if a model is served without its gallery: the swap
    never does that), retry.
gRPC: service ``gymops.face.Access``, unary methods ``Verify`` and ``Identify``, whose messages are
the same JSON documents as bytes (generic handlers: no generated stubs to keep in step with a .proto;
a client calls ``channel.unary_unary("/gymops.face.Access/Verify")``). Errors map to
INVALID_ARGUMENT, UNAUTHENTICATED and UNAVAILABLE. The token, when set, is the ``authorization:
Bearer <token>`` header (gRPC metadata ``authorization``).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
from concurrent import futures

from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gymops.face.matching import FaceMatcher, GalleryNotReady, InvalidPhoto

SERVICE = "gymops.face.Access"


class BadRequest(ValueError):
    pass


def _photo(body: dict) -> bytes:
    raw = body.get("photo")
    if not isinstance(raw, str) or not raw:
        raise BadRequest("photo: a base64 string is required")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("photo: not valid base64") from None


def verify(matcher: FaceMatcher, body: dict) -> dict:
    user_id = body.get("userId")
    if not isinstance(user_id, str) or not user_id:
        raise BadRequest("userId: a non-empty string is required")
    r = matcher.verify(_photo(body), user_id)
    return {"match": r.match, "similarity": r.similarity, "threshold": r.threshold, "modelVersion": r.model_version}


def identify(matcher: FaceMatcher, body: dict) -> dict:
    r = matcher.identify(_photo(body))
    return {"userId": r.user_id, "similarity": r.similarity, "threshold": r.threshold, "modelVersion": r.model_version}


METHODS = {"verify": verify, "identify": identify}


def _authorised(token: str, header: str | None) -> bool:
    return not token or hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())


def create_app(matcher: FaceMatcher, token: str = "") -> FastAPI:
    app = FastAPI(title="gymops face access", version="1")

    async def handle(name: str, request: Request):
        if not _authorised(token, request.headers.get("authorization")):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise BadRequest("the body is a JSON object")
            # the matcher blocks (a Triton embedding, ~6-15 ms): off the event loop, or one process
            # would answer HTTP requests one at a time
            return JSONResponse(await run_in_threadpool(METHODS[name], matcher, body))
        except (BadRequest, InvalidPhoto, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except GalleryNotReady as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    @app.post("/v1/face/verify")
    async def _verify(request: Request):
        return await handle("verify", request)

    @app.post("/v1/face/identify")
    async def _identify(request: Request):
        return await handle("identify", request)

    return app


def grpc_server(matcher: FaceMatcher, address: str, token: str = "", workers: int = 4):
    """A started grpc.Server serving SERVICE on ``address`` (host:port); stop it with .stop(grace)."""
    import grpc

    def method(name):
        def call(request: bytes, context):
            meta = dict(context.invocation_metadata())
            if not _authorised(token, meta.get("authorization")):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing token")
            try:
                body = json.loads(request)
                if not isinstance(body, dict):
                    raise BadRequest("the message is a JSON object")
                return json.dumps(METHODS[name](matcher, body)).encode()
            except (BadRequest, InvalidPhoto, json.JSONDecodeError, UnicodeDecodeError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except GalleryNotReady as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return grpc.unary_unary_rpc_method_handler(call)  # bytes in, bytes out

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Verify": method("verify"), "Identify": method("identify")}),))
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the face access gRPC server to {address}")
    server.start()
    return server
