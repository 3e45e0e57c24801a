"""The routes' OIP front door over REST: ``POST /v2/models/NAME/infer`` on the gateway's HTTP port (beside the
report pages, behind the same token), for clients that speak the protocol's HTTP/REST binding.

Unlike the gRPC front door this path is not byte-for-byte: the JSON (or binary-extension) body is converted
to a ``ModelInferRequest`` with the same parser the services' REST endpoints use
(:mod:`services.common.oip_json`), that message's bytes go through the route exactly like a gRPC client's
(primary or canary candidate, mirror, pairing, records), and the answering side's ``ModelInferResponse`` is
converted back to the protocol's JSON body. An error of the answering side keeps its gRPC code, mapped to the
HTTP status the services' REST endpoints use (:data:`services.common.oip_rest.HTTP_STATUS`).
"""

from __future__ import annotations

import uuid

from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

from services.common.logs import request_id_var
from services.common.oip_json import HEADER_LENGTH, infer_body, parse_infer
from services.common.oip_rest import HTTP_STATUS
from services.gateway.routes.table import RouteTable

TABLE = web.AppKey("route_table", RouteTable)
TIMEOUT_S = web.AppKey("route_timeout_s", float)


async def infer(request: web.Request) -> web.Response:
    table, timeout_s = request.app[TABLE], request.app[TIMEOUT_S]
    body = await request.read()
    rest = parse_infer(body, request.headers.get(HEADER_LENGTH), request.match_info["name"],
                       request.match_info.get("version", ""))
    call_id = request_id_var.get() or request.headers.get("x-request-id", "")[:256] or uuid.uuid4().hex
    if rest.timeout_s is not None:
        timeout_s = min(timeout_s, rest.timeout_s)
    outcome = await table.infer(rest.request.SerializeToString(), call_id, timeout_s)
    headers = {"x-request-id": call_id}
    if not outcome.ok:
        return web.json_response({"error": outcome.details, "code": outcome.code.name, "request_id": call_id},
                                 status=HTTP_STATUS.get(outcome.code, 500), headers=headers)
    payload, header_length = infer_body(pb.ModelInferResponse.FromString(outcome.reply), rest)
    if header_length is None:
        return web.Response(body=payload, content_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(header_length)
    return web.Response(body=payload, content_type="application/octet-stream", headers=headers)


def add_rest_front_door(app: web.Application, table: RouteTable, timeout_s: float) -> None:
    """Serve the routes' REST inference on ``app`` (the pages' application: its token and error handling)."""
    app[TABLE], app[TIMEOUT_S] = table, timeout_s
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_post(prefix + "/infer", infer)
