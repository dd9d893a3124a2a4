"""The payment service on Ray Serve, in rooms: ``edge`` (HTTP), ``wire`` (request and response shapes),
``flows`` (the drivers of the state machines), ``stores`` (SQL and Redis) and ``workers``
(background actors)."""
