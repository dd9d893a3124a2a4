"""Running payray: the ``payray`` command line, the one-machine stack, the demo,
and the embedded Postgres and Redis."""
