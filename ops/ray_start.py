"""``ray start`` for a node of a multi-node cluster on one machine, kept on loopback.

Ray keeps a node on 127.0.0.1 only when told it runs on one machine alone
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which ``ops.cluster`` sets for every process of its nodes, so the
dashboard and the workers resolve 127.0.0.1 to itself), and then its CLI refuses to add a second node; told
it is a cluster, it swaps 127.0.0.1 for the machine's routable address, and the cluster would listen on the
network. This entry point lets the CLI do both: join a cluster, at the address it is given. Every flag is
Ray's: ``python -m ops.ray_start start --node-ip-address=127.0.0.1 …``.
"""

from __future__ import annotations

import sys


def main() -> None:
    import ray._private.ray_constants as ray_constants
    import ray._private.services as services
    from ray.scripts.scripts import main as ray_cli

    ray_constants.ENABLE_RAY_CLUSTER = True
    services.resolve_ip_for_localhost = lambda host: host
    sys.argv[0] = "ray"
    ray_cli()


if __name__ == "__main__":
    main()
