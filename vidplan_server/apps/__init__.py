"""Applications: what combines the parts (simulator, planner, models, transport) into one job."""
