"""Serving: one transport-free :class:`~vidplan_server.serving.service.PlanService` and thin transports.

=====================  ==========================================================================
``service``            PlanService: validate, decode, sessions, history, bounded planner queue
``stream``             PlanStream: bidirectional planning on the newest observation
``messages``           transport-free request / reply dataclasses
``validation``         the one table of valid ranges and the field checks (messages name the field)
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
``wire/``              generated protobuf code (owned by the wire contract)
=====================  ==========================================================================
"""
