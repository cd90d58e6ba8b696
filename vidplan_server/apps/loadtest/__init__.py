"""``vidplan loadtest``: virtual robots replaying recorded episodes against one planning server.

Each virtual robot replays one recorded episode (any dataset :class:`~vidplan_server.data.reader.EpisodeDataset`
reads: our recordings and the DROID ports) at its control rate over its own connection and session: at every
control tick it is at the next step of its episode (episodes loop), and whenever the open-loop horizon of its
current chunk has run out (the client's :class:`~vidplan_client.chunks.ChunkScheduler` decides, as in
``RobotLoop``) and no request is in flight, it sends the JPEG views and the state of that step, with the history
the server's model sees, and a deadline. Robots start staggered over one re-planning interval. Latency goes into
an HDR histogram corrected for coordinated omission at the expected request interval (horizon / control rate), so
a server that makes robots wait is not rewarded by the requests they could not send.

Decided: a driver of our own on ``grpc.aio`` (and ``httpx``'s asyncio client for HTTP), not locust. What we need
and locust does not give: (1) a robot's requests are not a stream of independent calls but a replay with state
(episode step, sequence number, the chunk scheduler deciding *when* the next request is due, the history that goes
with it), which in locust means writing the whole robot anyway inside a ``User``; (2) its gRPC user pattern runs
the blocking client under gevent's monkey patching, which does not mix with ``grpc.aio`` nor with a process that
imports our asyncio transports, and its statistics are rounded response-time buckets without coordinated-omission
correction, so we would still keep our own HDR histogram; (3) on the 2 cores the server also uses, one event loop
with R coroutines costs the server least; (4) pacing must be testable against a fake clock, which an injectable
clock in our own loop gives for free. What we give up (its web UI, distributed workers) the one-screen summary,
``loadtest.json`` and the plots replace; a lab that needs more load than one process sends can run one
``vidplan loadtest`` per machine against the same server.

Parts: :mod:`.config` (settings), :mod:`.replay` (episodes as encoded observations; one robot's pacing, pure),
:mod:`.transport` (gRPC and HTTP, one connection per robot; ``OK`` or a status), :mod:`.http_wire` (protobuf <->
the HTTP API's JSON), :mod:`.clock` (real and injectable time), :mod:`.driver` (the robots' event loop),
:mod:`.stats` (HDR histograms, errors, stage times), :mod:`.ramp` (the step-by-step search for the largest robot
count that holds), :mod:`.memory` (the server's resident memory from ``/metrics``), :mod:`.plots`, :mod:`.report`
(``loadtest.json`` and the summary) and :mod:`.app` (one run or a ramp, end to end). The command is
:mod:`vidplan_server.commands.loadtest`.
"""
