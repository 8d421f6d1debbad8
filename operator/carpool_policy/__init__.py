"""carpool's scaling policy: pure functions of their arguments (no I/O, no clock, no kopf)."""
