import llmd_bbr


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_bbr.__version__.count(".") >= 2
