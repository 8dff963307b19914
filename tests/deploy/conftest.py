"""Fixtures of the deployment checks.

Every overlay under deploy/kustomize/overlays/<hardware>/<mode> is rendered once per session with
`kubectl kustomize` and handed to the tests as a `Render` (the objects plus lookups); tests that take
an `overlay` argument run once per overlay.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_tree import KUSTOMIZE, OVERLAYS, Render, render_path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "overlay" in metafunc.fixturenames:
        metafunc.parametrize("overlay", OVERLAYS, ids=OVERLAYS)


@pytest.fixture
def rendered(overlay: str) -> Render:
    """The overlay, rendered by kubectl kustomize (once per session)."""
    return render_path(KUSTOMIZE / "overlays" / overlay)
