import llmd_sim


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_sim.__version__.count(".") >= 2
