"""``vidplan demo``: one simulated episode driven through the thin robot client against a planning server.

The simulated scene (:class:`~vidplan_server.sim.robot_env.SimRobotEnv`, DROID's ``RobotEnv`` interface) is
driven by the very code a real robot runs: ``vidplan_client``'s :class:`~vidplan_client.VidPlanClient` and
:class:`~vidplan_client.RobotLoop` (15 Hz, plans requested in the background, hold when there is no valid chunk).
The server is ``--server ADDR``, or a ``vidplan serve`` the demo starts itself as a subprocess on free localhost
ports (bundled checkpoint unless ``--ckpt``), waits until its gRPC health says SERVING, and stops with SIGTERM
at the end, also on errors and Ctrl-C. Its log goes to ``OUT/server.log``.

Wall time and simulated time. The simulator advances one control period (1/15 s) per command and never on its own;
the loop's clock is the wall clock divided by ``--slowdown`` (``sleep`` multiplies by it). So one simulated second
takes ``slowdown`` wall seconds, the robot commands 15 times per simulated second, and a plan that takes L wall
seconds costs the robot L / slowdown simulated seconds (L / slowdown * 15 commands, holding or executing the
previous chunk meanwhile). ``--slowdown 1`` is real time: the robot sees the server's true latency, as a real robot
next to this machine would. Decided: the default is 5, which lets a CPU server (~0.5-1 s per plan at its defaults on
2 cores) stand in for a 5 times faster (GPU) one; at real time on such a CPU every plan arrives after its open-loop
horizon and the robot only holds (measured), which demonstrates the safety behaviour but not planning.
Plan deadlines (``--plan-timeout``) are in simulated seconds and scaled the same way. Simulated and loop time agree
as long as one cycle (render three views, encode them, step the physics) fits into 1/15 s * slowdown of wall
time; a cycle that does not is not made up for (the simulated robot then lags the loop clock), and the report
counts such overruns. Timestamps sent to the server are loop-clock seconds.

Writes to ``--out``: ``demo.mp4`` (15 fps: a header line, the three camera views side by side, and below them the
uncertainty heatmaps of the plan being executed, for the predicted frame of the row being executed; each view
``--view-scale`` times the simulator's size: 576 x 408 pixels at 64 x 64 views and scale 3), ``report.json``
(also printed) and, with a server of its own, ``server.log``.

Parts: :mod:`.command` (options and handler), :mod:`.app` (server life cycle and report), :mod:`.episode` (the
loop), :mod:`.video` (``demo.mp4``); the server subprocess is :mod:`vidplan_server.serving.local`, the scaled
clock :mod:`vidplan_server.sim.realtime`.
"""
