"""The carpool operator: reconciles InferencePools and runs the queue-delay control loop."""
