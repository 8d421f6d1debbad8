"""The carpool inference worker: FastAPI over a torch continuous-batching engine."""
