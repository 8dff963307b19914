"""Every overlay renders with the real `kubectl kustomize`, is complete, and is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from deploy_tree import OVERLAYS, REPO, Render, kubectl, members, render_with_components
from schema_check import errors_of

# What every overlay deploys, whatever the hardware and mode.
REQUIRED = {
    ("Namespace", "llm-d"),
    ("Gateway", "llmd-gateway"),
    ("HTTPRoute", "llmd"),
    ("InferencePool", "llmd"),
    ("EnvoyFilter", "llmd-bbr"),
    ("Deployment", "llmd-epp"),
    ("Deployment", "llmd-bbr"),
    ("Deployment", "llmd-kvmanager"),
    ("Deployment", "llmd-modelservice"),
    ("CustomResourceDefinition", "modelservices.llm-d.ai"),
    ("ConfigMap", "llmd-epp-config"),
}


def test_kubectl_ships_kustomize_v5() -> None:
    out = subprocess.run(
        [kubectl(), "version", "--client"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Kustomize Version: v(\d+)\.", out)
    assert match, f"kubectl reports no kustomize version:\n{out}"
    assert int(match.group(1)) >= 5, out


def test_there_are_overlays_for_every_hardware() -> None:
    hardware = {o.split("/")[0] for o in OVERLAYS}
    assert hardware >= {"nvidia", "amd", "intel-xpu", "tpu", "cpu", "kind"}
    modes = {o.split("/")[1] for o in OVERLAYS}
    assert modes == {"inference-scheduling", "pd-disaggregation", "wide-ep"}


def test_overlay_renders_the_whole_stack(rendered: Render) -> None:
    present = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    assert present >= REQUIRED, f"missing: {sorted(REQUIRED - present)}"
    assert rendered.engine_workloads(), "no engine workload in the overlay"


def test_every_namespaced_object_is_in_llm_d(rendered: Render) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    wrong = [
        f"{o['kind']}/{o['metadata']['name']}: {o['metadata'].get('namespace')!r}"
        for o in rendered.objects
        if o["kind"] not in cluster_scoped and o["metadata"].get("namespace") != "llm-d"
    ]
    assert not wrong, wrong


def test_mode_specific_objects(rendered: Render, overlay: str) -> None:
    mode = overlay.split("/")[1]
    kinds = {o["kind"] for o in rendered.engine_workloads()}
    roles = {
        t.labels.get("llm-d.ai/role")
        for t in rendered.pod_templates()
        if t.owner in rendered.engine_workloads()
    }
    if mode == "wide-ep":
        assert kinds == {"LeaderWorkerSet"}
        assert rendered.get("Deployment", "llmd-expert-router") is not None
    else:
        assert kinds == {"Deployment"}
        assert rendered.get("Deployment", "llmd-expert-router") is None
    if mode == "pd-disaggregation":
        assert roles == {"prefill", "decode"}
    else:
        assert roles == {"both"}


def test_our_images_come_from_the_registry_with_member_versions(rendered: Render) -> None:
    """The images component maps every `llmd-*` image name to registry:version (it must be listed
    last in an overlay, or images added after it stay unmapped and unpullable)."""
    versions = {m.name: m.version for m in members()}
    images = {c["image"] for t in rendered.pod_templates() for c in t.containers()}
    ours = {i for i in images if i.rsplit("/", 1)[-1].split(":")[0] in versions}
    assert ours, images
    for image in ours:
        name, _, tag = image.rsplit("/", 1)[-1].partition(":")
        assert "/" in image, f"{image}: not mapped to a registry (images component not last?)"
        assert tag == versions[name], f"{image}: tag is not {name}'s version {versions[name]}"


def test_images_component_is_pinned_to_member_versions() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "images.py"), "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_overlay_renders_with_the_monitoring_component(overlay: str, tmp_path: Path) -> None:
    with_monitoring = render_with_components(overlay, ["monitoring"], tmp_path)
    kinds = {o["kind"] for o in with_monitoring.objects}
    assert {"ServiceMonitor", "PodMonitor"} <= kinds
    problems = [p for o in with_monitoring.objects for p in errors_of(o)]
    assert not problems, problems


def test_readme_table_lists_exactly_the_overlays() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    listed = set(re.findall(r"`overlays/([a-z0-9-]+/[a-z-]+)`", readme))
    assert listed == set(OVERLAYS), (
        f"deploy/README.md lists {sorted(listed ^ set(OVERLAYS))} wrongly "
        "(missing from the table, or no such overlay)"
    )
