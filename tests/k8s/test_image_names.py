"""The images `./dev images` builds are the ones the chart pulls, skaffold builds and compose runs:
the same names (the chart's repositories), the same tag where a file fixes one (the chart's
appVersion), each from the same Dockerfile."""

from __future__ import annotations

import yaml

from chat_devtools import images
from tests.k8s import support

VALUES_KEYS = {"api": "api", "outbox-relay": "outboxRelay", "relay-operator": "operator",
               "ws-gateway": "wsGateway"}


def built() -> dict[str, str]:
    """service -> ``repository:tag`` as `./dev images` tags it."""
    return {service: images.image_name(service, support.ROOT) for service in images.SERVICES}


def dockerfile_of(service: str) -> str:
    return str(images.dockerfile(service, support.ROOT).relative_to(support.ROOT))


def test_every_service_of_the_chart_is_built() -> None:
    assert set(VALUES_KEYS) == set(images.SERVICES)


def test_the_charts_default_images_are_what_dev_images_builds() -> None:
    values = support.load_yaml(support.CHART / "values.yaml")
    app_version = support.load_yaml(support.CHART / "Chart.yaml")["appVersion"]
    for service, name in built().items():
        image = values[VALUES_KEYS[service]]["image"]
        tag = image["tag"] or values["image"]["tag"] or app_version
        assert f"{image['repository']}:{tag}" == name, service
    # And as rendered: the containers of every Deployment and the migration Job.
    docs = support.render()
    rendered = {c["image"] for _, spec in support.pod_specs(docs) for c in spec["containers"]}
    assert rendered == set(built().values())


def test_skaffold_builds_the_same_names_from_the_same_dockerfiles() -> None:
    docs = [d for d in yaml.safe_load_all((support.ROOT / "skaffold.yaml").read_text()) if d]
    (chat,) = [d for d in docs if d["metadata"]["name"] == "chat-service"]
    builds = [chat["build"]] + [p["build"] for p in chat["profiles"] if "build" in p]
    # skaffold chooses its own tags (git commit, content digest): the names must match.
    expected = {name.rpartition(":")[0]: dockerfile_of(service)
                for service, name in built().items()}
    for build in builds:
        artifacts = {a["image"]: a["docker"]["dockerfile"] for a in build["artifacts"]}
        assert artifacts == expected
        assert {a["context"] for a in build["artifacts"]} == {"."}


def test_compose_runs_what_dev_images_builds() -> None:
    services = support.load_yaml(support.ROOT / "docker-compose.yml")["services"]
    by_dockerfile = {dockerfile_of(service): name for service, name in built().items()}
    built_here = {name: svc for name, svc in services.items() if "build" in svc}
    assert set(built_here) == {"migrate", "api", "outbox-relay", "ws-gateway"}
    for name, svc in built_here.items():
        assert svc["build"]["context"] == "."
        assert svc["image"] == by_dockerfile[svc["build"]["dockerfile"]], name


def test_dockerfiles_name_only_bases_dev_images_can_stand_in_for() -> None:
    """Every external base has a stand-in recipe (else `./dev images` stops and says so)."""
    bases = images.base_images(support.ROOT)
    assert {ref.rpartition(":")[0] for ref in bases} == {"python", "ghcr.io/astral-sh/uv"}
    for ref in bases:
        repo = ref.rpartition(":")[0]
        if repo == "ghcr.io/astral-sh/uv":
            images.uv_recipe(ref)
        else:
            assert repo == "python", ref
            images.python_recipe(ref)
