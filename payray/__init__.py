"""payray's pure core: money, the charge state machine, fingerprints, errors, settings and the CLI."""
