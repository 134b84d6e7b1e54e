"""Host tier, Ray mode of the batch client: Ray Data, or a skip saying how to install it."""
from __future__ import annotations


def require_ray():
    """Ray Data, or a skip with the reason (CI may run without the [ray] extra)."""
    import pytest

    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        pytest.skip(f"Ray-mode host tests skipped: Ray Data is not installed ({err}); "
                    "pip install -r requirements-ray.txt", allow_module_level=True)
    return ray
