"""Running payray: the ``payray`` command line, the one-machine stack, the demo, embedded Postgres and Redis."""
