"""The simulator: a discrete-event model of a pool that runs carpool's policy beside baselines."""
