"""The HTTP edge: the FastAPI app inside a Serve deployment, authentication, request bodies, metrics."""
