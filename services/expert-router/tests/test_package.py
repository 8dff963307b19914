import llmd_expert_router


def test_package_imports_and_reports_its_version() -> None:
    assert llmd_expert_router.__version__.count(".") >= 2
