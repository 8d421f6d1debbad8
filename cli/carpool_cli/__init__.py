"""The ``carpool`` command: one entry point that dispatches to each component's CLI."""
