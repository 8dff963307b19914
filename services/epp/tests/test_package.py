import llmd_epp


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_epp.__version__.count(".") >= 2
