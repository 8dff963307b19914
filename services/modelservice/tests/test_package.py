import llmd_modelservice


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_modelservice.__version__.count(".") >= 2
