"""payray's pure core: money, the charge and refund state machines, wallet slots and passivation,
fingerprints, errors and settings. It imports only the standard library and itself, and does no IO."""
