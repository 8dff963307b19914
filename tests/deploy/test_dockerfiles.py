"""Every member's Dockerfile, read without a Docker engine: stages, uv, user, entrypoint, ports,
labels; and `make images` / deploy/images.py, which build and tag them with the member's version."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from deploy_tree import REPO, Member, members
from dockerfile import Dockerfile, parse, run_command

MEMBERS = [m for m in members() if (m.path / "Dockerfile").is_file()]
IDS = [m.name for m in MEMBERS]

# The root README's "Ports" table names each service; the SDK image serves nothing.
README_ROW = {
    "llmd-epp": "EPP",
    "llmd-bbr": "BBR",
    "llmd-kvmanager": "kvmanager",
    "llmd-modelservice": "modelservice",
    "llmd-expert-router": "expert-router",
    "llmd-sim": "vllm-sim / vLLM",
}
# Members whose service answers HTTP health checks (gRPC-only services have no HEALTHCHECK).
HTTP_HEALTH = {
    "llmd-kvmanager": ("9011", "/healthz"),
    "llmd-modelservice": ("8090", "/healthz"),
    "llmd-expert-router": ("8095", "/healthz"),
    "llmd-sim": ("8000", "/health"),
}


def readme_ports() -> dict[str, set[int]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Ports", 1)[1].split("\n## ", 1)[0]
    out = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.search(r"\d", cells[1]):
            ports = re.sub(r"\(.*?\)", "", cells[1])  # "(8200+ in local mode)" is local-only
            out[cells[0]] = {int(p) for p in re.findall(r"\b\d{2,5}\b", ports)}
    return out


@pytest.fixture(params=MEMBERS, ids=IDS)
def member(request: pytest.FixtureRequest) -> Member:
    m: Member = request.param
    return m


@pytest.fixture
def dockerfile(member: Member) -> Dockerfile:
    return parse(member.path / "Dockerfile")


def workspace_deps(member: Member) -> set[str]:
    """The workspace members this member depends on (their sources go into its image)."""
    import tomllib

    with (member.path / "pyproject.toml").open("rb") as f:
        deps = tomllib.load(f)["project"].get("dependencies", [])
    names = {re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0] for d in deps}
    return {m.rel for m in members() if m.name in names}


def test_every_service_has_a_dockerfile() -> None:
    assert {m.path.name for m in members() if not (m.path / "Dockerfile").is_file()} == set()


def test_two_stages_builder_then_runtime(dockerfile: Dockerfile) -> None:
    assert [s.name for s in dockerfile.stages] == ["builder", "runtime"]
    assert dockerfile.directives.get("syntax", "").startswith("docker/dockerfile:1.")
    builder, runtime = dockerfile.stages
    # The venv's interpreter is a link to the base image's Python: both stages use the same one.
    assert builder.base == runtime.base and runtime.base.startswith("python:"), (
        builder.base,
        runtime.base,
    )
    assert "slim" in runtime.base


def test_builder_installs_the_member_with_uv_from_the_lock(
    dockerfile: Dockerfile, member: Member
) -> None:
    builder = dockerfile.stage("builder")
    assert any("ghcr.io/astral-sh/uv" in c.value for c in builder.of("COPY")), "no uv binary"
    syncs = [shlex.split(run_command(r)) for r in builder.of("RUN") if "uv sync" in r.value]
    assert len(syncs) == 2, "a dependencies layer, then the member"
    for argv in syncs:
        assert argv[:2] == ["uv", "sync"]
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(argv), argv
        assert argv[argv.index("--package") + 1] == member.name, argv
    assert "--no-install-workspace" in syncs[0] and "--no-install-workspace" not in syncs[1]


def test_dependency_layer_sees_the_whole_workspace_before_any_source(
    dockerfile: Dockerfile, member: Member
) -> None:
    builder = dockerfile.stage("builder")
    first_sync = next(i for i in builder.instructions if "uv sync" in i.value)
    before = [c for c in builder.of("COPY") if c.line < first_sync.line and "--from" not in c.value]
    copied = {w for c in before for w in c.words()[:-1]}
    wanted = {"pyproject.toml", "uv.lock"} | {f"{m.rel}/pyproject.toml" for m in members()}
    assert wanted <= copied, f"not copied before the first uv sync: {sorted(wanted - copied)}"
    assert all(w.endswith(("pyproject.toml", "uv.lock")) for w in copied), copied
    after = {c.words()[0] for c in builder.of("COPY") if c.line > first_sync.line}
    assert after == {member.rel} | workspace_deps(member), after


def test_version_build_arg_is_checked_against_the_members_pyproject(
    dockerfile: Dockerfile, member: Member
) -> None:
    builder = dockerfile.stage("builder")
    checks = [r for r in builder.of("RUN") if "tomllib" in r.value]
    assert len(checks) == 1
    assert f'{member.rel}/pyproject.toml "${{VERSION}}"' in checks[0].value
    assert [a.value for a in builder.of("ARG")] == ["VERSION"]
    # The check runs before the member is installed.
    last_sync = [r for r in builder.of("RUN") if "uv sync" in r.value][-1]
    assert checks[0].line < last_sync.line


def test_oci_labels_carry_the_members_own_version(dockerfile: Dockerfile, member: Member) -> None:
    runtime = dockerfile.stage("runtime")
    assert [a.value for a in runtime.of("ARG")] == ["VERSION"], "VERSION without a default"
    labels = {}
    for label in runtime.of("LABEL"):
        for word in label.words():
            k, _, v = word.partition("=")
            labels[k] = v
    assert labels["org.opencontainers.image.title"] == member.name
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")


def test_runtime_runs_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    users = runtime.of("USER")
    assert users, "no USER"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit() and int(uid) > 0, users[-1].value  # numeric: runAsNonRoot can verify it
    assert gid.isdigit() and int(gid) > 0
    created = " ".join(r.value for r in runtime.of("RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    # Nothing runs as root after the switch, and the venv copied in stays root-owned (read-only).
    assert all(i.line < users[-1].line for i in runtime.of("RUN"))
    assert not any("--chown" in c.value for c in runtime.of("COPY"))
    assert not any("uv" in c.value.split() for c in runtime.of("RUN")), "no uv in the runtime"


def test_entrypoint_is_the_members_own_command(dockerfile: Dockerfile, member: Member) -> None:
    (entry,) = dockerfile.stage("runtime").of("ENTRYPOINT")
    argv = entry.exec_form()
    assert argv, "ENTRYPOINT in exec form, so that signals reach the service"
    if member.name == "llmd-sdk":
        assert argv == ["/app/.venv/bin/python", "-m", "llmd_sdk.hardware"]
        assert (member.path / "src" / "llmd_sdk" / "hardware" / "__main__.py").is_file()
        return
    assert argv == [f"/app/.venv/bin/{member.name}"], argv
    if not member.scripts:
        pytest.skip(
            f"{member.rel}/pyproject.toml declares no console script yet (service not landed)"
        )
    # The convention of every service: the console script `<name>` is `<package>.server:main`.
    (package,) = (
        p.name for p in (member.path / "src").iterdir() if p.is_dir() and p.name.startswith("llmd")
    )
    assert member.scripts.get(member.name) == f"{package}.server:main", member.scripts


def test_exposed_ports_are_the_readme_ports(dockerfile: Dockerfile, member: Member) -> None:
    exposed = {int(p) for e in dockerfile.stage("runtime").of("EXPOSE") for p in e.words()}
    if member.name == "llmd-sdk":
        assert exposed == set()
        return
    assert exposed == readme_ports()[README_ROW[member.name]]


def test_healthcheck_where_the_service_answers_http(dockerfile: Dockerfile, member: Member) -> None:
    checks = dockerfile.stage("runtime").of("HEALTHCHECK")
    if member.name not in HTTP_HEALTH:
        assert checks == []
        return
    (check,) = checks
    argv = check.exec_form()
    assert argv and argv[0] == "/app/.venv/bin/python", "no curl in the slim image"
    port, path = HTTP_HEALTH[member.name]
    assert f"http://127.0.0.1:{port}{path}" in argv[-1]


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p)
            or fnmatch.fnmatch(path, p.removeprefix("**/"))
            or path.startswith(p.removeprefix("**/") + "/")
            for p in patterns
        )

    for m in MEMBERS:
        df = parse(m.path / "Dockerfile")
        for c in df.stage("builder").of("COPY"):
            if "--from" in c.value:
                continue
            for src in c.words()[:-1]:
                assert not ignored(src), (
                    f"{m.rel}/Dockerfile copies {src}, which .dockerignore drops"
                )
    assert ignored(".venv") and ignored("services/bbr/tests") and ignored(".git")


def test_images_build_with_the_member_version_as_arg_and_tag() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "images.py"),
            "--registry",
            "r.example/x",
            "build",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == len(MEMBERS)
    for m, line in zip(MEMBERS, lines, strict=True):
        argv = shlex.split(line)
        assert argv[:2] == ["docker", "build"] and argv[-1] == "."
        assert argv[argv.index("--file") + 1] == f"{m.rel}/Dockerfile"
        assert argv[argv.index("--build-arg") + 1] == f"VERSION={m.version}"
        assert argv[argv.index("--tag") + 1] == f"r.example/x/{m.name}:{m.version}"


def test_make_images_says_so_and_succeeds_without_a_docker_engine() -> None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
        if probe.returncode == 0:
            pytest.skip("a Docker engine answers here: `make images` would really build")
    done = subprocess.run(
        ["make", "-s", "images"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "no Docker engine here" in done.stdout
