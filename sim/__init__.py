"""The SimPy fault-injection simulator: payray's own state machines under simulated components and faults."""
