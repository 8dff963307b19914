import llmd_kvmanager


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_kvmanager.__version__.count(".") >= 2
