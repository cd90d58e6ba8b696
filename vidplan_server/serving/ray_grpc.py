"""The VidPlan gRPC service for Ray Serve's gRPC proxy, with requests passed on as raw bytes.

Serve's proxy registers a service through an ``add_<Service>Servicer_to_server`` function and keeps its request
deserializers. With the generated one, the proxy would pickle parsed protobuf messages to the replica, and the
generated classes cannot be pickled by reference (their module is ``vidplan.v1.vidplan_pb2``, the proto's path,
not ``vidplan_client.wire.vidplan_pb2``). Raw bytes travel as they are, and the replica parses them as the
one-process servicer does (:func:`~vidplan_server.serving.grpc_server.parse`): a malformed request is
INVALID_ARGUMENT, not a proxy error. Imports only grpc and the wire contract, as it loads in Serve's proxy.
"""

from __future__ import annotations

import grpc
from vidplan_client.wire import vidplan_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VidPlan"].full_name  # "vidplan.v1.VidPlan"


def add_VidPlanServicer_to_server(servicer, server) -> None:  # noqa: N802 - the name Serve's convention expects
    """Register Plan, StreamPlan and GetInfo without request deserializers (Serve replaces the handlers' bodies
    with its routing to the replica's methods of the same names)."""
    handlers = {
        "Plan": grpc.unary_unary_rpc_method_handler(servicer.Plan),
        "StreamPlan": grpc.stream_stream_rpc_method_handler(servicer.StreamPlan),
        "GetInfo": grpc.unary_unary_rpc_method_handler(servicer.GetInfo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
