"""Serving: one transport-free :class:`~vidplan_server.serving.service.PlanService` and thin transports.

=====================  ==========================================================================
``service``            PlanService: check, schedule, admission, prepare, execute (decode, sessions, history, queue)
``stream``             PlanStream: bidirectional planning on the newest observation, through the same pipeline
``messages``           transport-free request / reply dataclasses
``validation``         the table of valid ranges by wire path; the planner's checks under wire field names
``images``             JPEG / PNG / raw decoding and resizing (OpenCV)
``history``            picking the T history frames by timestamp
``sessions``           per-robot ring buffers with idle expiry
``worker``             the planner's single thread with bounded admission; deadlines kept in the queue
``logs``               rate-limited log lines about refused requests
``metrics``            Prometheus metrics
``errors``             the exception hierarchy both transports map once
``grpc_server``        grpc.aio servicer, auth interceptor, health, reflection
``grpc_convert``       protobuf <-> messages
``http_app``           FastAPI app (``http_models``: its pydantic bodies)
``server``             both transports in one event loop, graceful shutdown
``cli_serve``          ``vidplan serve``
``local``              ``vidplan serve`` as a subprocess on free ports, and a checked connection to a server
=====================  ==========================================================================

The generated protobuf code is the client's (:mod:`vidplan_client.wire`), as are the camera names and step limits.
"""
