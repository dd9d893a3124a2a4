"""The HTTP face of payray: a FastAPI app inside a Ray Serve deployment, and the charge flow's driver."""
