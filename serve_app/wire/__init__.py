"""The wire shapes: request bodies as validated models, and API objects rendered to the bytes sent."""
