"""The benchmark's names and defaults, importable without the simulator (the CLI parser reads them)."""

AGENT_NAMES = ("expert", "policy", "goal-policy", "vidplan", "vidplan-no-uq", "vidplan-basis")
SPLITS = ("val", "ood")
DEFAULT_SEED = 1000  # apart from the seeds of the recorded datasets (0-3, README), so no model saw these scenes
