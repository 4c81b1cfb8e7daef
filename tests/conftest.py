import pytest


@pytest.fixture(params=["numpy", "numba"])
def cpu_backend(request):
    """The CPU backends: every theory test runs on the reference and on Numba."""
    return request.param
