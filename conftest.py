"""Root pytest hooks: under pytest-xdist (make test runs `-n 2 --dist loadgroup`) the cells of one
notebook share a kernel and must run in order on one worker, so each nbval cell is put in the xdist
group of its notebook; unit tests are spread one by one."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.xdist_group(name=str(item.path)))
