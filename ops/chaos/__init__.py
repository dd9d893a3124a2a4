"""``payray chaos``: faults injected on a schedule into a multi-node stack under Locust load, then every
invariant checked and each fault's recovery timed."""
