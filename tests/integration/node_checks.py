"""Stripe's Node SDK as a merchant's backend: the checks in ``tests/node`` and the node that runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_CHECKS = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="session")
def node() -> str:
    """node, with the pinned stripe package installed next to the checks (``bin/test`` installs node)."""
    found = shutil.which("node")
    assert found is not None, "node is needed for the stripe-node checks: bin/test installs Debian's nodejs"
    if not (NODE_CHECKS / "node_modules" / "stripe").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install the stripe package for the stripe-node checks"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CHECKS, check=True, timeout=300)
    return found
