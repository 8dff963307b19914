import llmd_sdk


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_sdk.__version__.count(".") >= 2
