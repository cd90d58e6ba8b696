"""``vidplan`` subcommands, one module per group: ``sim``, ``data``, ``train``, ``eval``, ``plan``.

Each module has its handlers and a ``register(groups)`` that adds its subparser; ``vidplan_server/cli.py`` calls
them in order. ``serve``, ``demo`` and ``eval closed-loop`` live with their part (``serving/cli_serve.py``,
``apps/demo/command.py``, ``evaluation/closed_loop/cli.py``). Bad input raises
:class:`~vidplan_server.argtypes.CliError` (exit status 2).
"""
