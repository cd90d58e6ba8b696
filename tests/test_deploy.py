"""Deployment files, checked offline: the Dockerfile's stages and runtime contract, the compose stack (GPU, stop
timeout, Prometheus, Grafana dashboard against the metrics the server exports), and the Kubernetes manifests against
the Kubernetes schemas (kubernetes-validate) and against each other (ports, probes, drain, settings).

``python scripts/check_image_install.py`` runs the Dockerfile's install steps in a clean virtualenv and the server
as the image runs it (minutes; not a test)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.serving.doubles import StubPlanner, call
from vidplan_server.serving.config import ServerConfig
from vidplan_server.serving.service import PlanService
from vidplan_server.serving.settings import ServeSettings, variable

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _script():
    spec = importlib.util.spec_from_file_location("check_image_install", ROOT / "scripts" / "check_image_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docker():
    script = _script()
    return script, script.parse_dockerfile((ROOT / "Dockerfile").read_text())


def _yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _shutdown_grace(env: dict[str, str]) -> float:
    return float(env.get("VIDPLAN_SHUTDOWN_GRACE", ServerConfig().shutdown_grace_s))


# ---------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_multi_stage_with_a_cuda_base_and_a_cpu_variant(docker):
    script, stages = docker
    names = [s["name"] for s in stages]
    assert {"base-gpu", "base-cpu", "base", "builder", "runtime"} <= set(names)
    assert names[-1] == "runtime"  # the default target
    global_args = dict(a.partition("=")[::2] for a in script.instructions(stages[0], "ARG"))
    assert global_args["VARIANT"] == "gpu"
    assert "nvidia/cuda" in global_args["CUDA_IMAGE"] and "runtime" in global_args["CUDA_IMAGE"]
    assert script.stage(stages, "base")["from"] == "base-${VARIANT}"
    assert script.env_of(script.stage(stages, "base-gpu"))["VIDPLAN_DEVICE"] == "cuda"
    assert script.env_of(script.stage(stages, "base-cpu"))["VIDPLAN_DEVICE"] == "cpu"
    # Compilers stay in the builder; the runtime takes the finished virtualenv only.
    runtime = script.stage(stages, "runtime")
    assert runtime["from"] == "base"
    assert script.instructions(runtime, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert not any("build-essential" in r for r in script.instructions(runtime, "RUN"))


def test_the_builder_runs_install_sh_on_the_copied_sources(docker):
    script, stages = docker
    builder = script.stage(stages, "builder")
    assert "sh deploy/docker/install.sh" in script.instructions(builder, "RUN")
    copied = " ".join(script.instructions(builder, "COPY"))
    for needed in ("pyproject.toml", "README.md", "LICENSE", "client/", "vidplan_server/", "deploy/docker/install.sh"):
        assert needed in copied
    install = (ROOT / "deploy" / "docker" / "install.sh").read_text()
    # torch pinned as pyproject allows and installed first; client and server in one non-editable pip command.
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_version = dict(a.partition("=")[::2] for a in script.instructions(builder, "ARG"))["TORCH_VERSION"]
    assert f"TORCH_VERSION:-{torch_version}" in install and f'"torch>=2.4,<{_next_minor(torch_version)}"' in pyproject
    assert 'pip install --no-cache-dir "$SRC/client" "$SRC${EXTRAS:+[$EXTRAS]}"' in install and " -e " not in install
    # The build context holds everything the COPY lines name.
    context = {str(p) for p in script.context_files(ROOT)}
    assert {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "deploy/docker/install.sh",
        "client/pyproject.toml",
        "vidplan_server/checkpoints/default/config.json",
    } <= context
    assert not any(p.startswith((".venv/", "outputs/", "tests/", ".git/")) for p in context)


def _next_minor(version: str) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) + 1}"


def test_the_runtime_is_non_root_healthchecked_by_grpc_and_stops_on_sigterm(docker):
    script, stages = docker
    runtime = script.stage(stages, "runtime")
    (user,) = script.instructions(runtime, "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert script.instructions(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert script.exec_form(script.instructions(runtime, "ENTRYPOINT")[0]) == ["vidplan", "serve"]
    options, command = script.healthcheck(runtime)
    assert command[0] == "vidplan-client" and command[-1] == "health"  # grpc.health.v1, no token needed
    env = script.env_of(runtime)
    assert f"127.0.0.1:{env['VIDPLAN_GRPC_PORT']}" in command
    assert script.seconds(options["start-period"]) >= 60  # loading and warming the model up
    assert script.seconds(options["timeout"]) > 4  # the check's own --timeout 4 fits
    exposed = {int(p) for p in " ".join(script.instructions(runtime, "EXPOSE")).split()}
    assert exposed == {int(env["VIDPLAN_GRPC_PORT"]), int(env["VIDPLAN_HTTP_PORT"])}
    assert env["VIDPLAN_HOST"] == "0.0.0.0"
    assert all(name in ServeSettings.model_fields for name in _settings_of(env))  # no typo in a VIDPLAN_* name


def _settings_of(env: dict[str, str]) -> list[str]:
    return [k[len("VIDPLAN_") :].lower() for k in env if k.startswith("VIDPLAN_")]


# ---------------------------------------------------------------------------------------------- compose
def test_compose_reserves_a_gpu_and_waits_longer_than_the_drain():
    (compose,) = _yaml(DEPLOY / "compose.yaml")
    server = compose["services"]["vidplan"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    grace = _shutdown_grace(server["environment"])
    assert server["stop_signal"] == "SIGTERM"
    assert _duration_s(server["stop_grace_period"]) > grace
    assert {p.split(":")[1] for p in server["ports"]} == {"50051", "8000"}
    assert all(name in ServeSettings.model_fields for name in _settings_of(server["environment"]))
    assert compose["services"]["prometheus"]["depends_on"]["vidplan"]["condition"] == "service_healthy"
    cpu = (DEPLOY / "compose.cpu.yaml").read_text()
    assert "VARIANT: cpu" in cpu and "deploy: !reset {}" in cpu


def _duration_s(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert match, text
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


def test_prometheus_scrapes_the_server_with_its_token():
    (config,) = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["vidplan:8000"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/vidplan_token"}
    (compose,) = _yaml(DEPLOY / "compose.yaml")
    assert compose["secrets"]["vidplan_token"] == {"environment": "VIDPLAN_TOKEN"}


def test_the_dashboard_queries_metrics_the_server_exports():
    service = PlanService(StubPlanner(stages_ms={"encode": 1.0}))
    try:
        service.warmup()
        asyncio.run(service.plan(call()))
        exported = {m.name for m in service.metrics.registry.collect()}
    finally:
        service.close()
    exported |= {"http_requests"}  # prometheus-fastapi-instrumentator's, on the HTTP app's routes
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vidplan.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 10
    for expr in exprs:
        for name in re.findall(r"\b((?:vidplan|process|python|http)_[a-z_]+)", expr):
            family = re.sub(r"_(bucket|count|sum|total|info)$", "", name)
            assert family in exported or name in exported, f"{name} in {expr!r} is not exported"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "vidplan-server"
    (provider,) = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "vidplan.yaml")[0]["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")[0]["datasources"][0]
    assert datasource["uid"] == "prometheus" and all(
        p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"]
    )


# ---------------------------------------------------------------------------------------------- Kubernetes
K8S_VERSION = "1.33.0"


def _manifests() -> dict[str, dict]:
    out = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _yaml(path):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_k8s_manifests_are_valid_kubernetes_objects():
    import kubernetes_validate

    manifests = _manifests()
    assert {
        "Deployment/vidplan",
        "Service/vidplan",
        "PodDisruptionBudget/vidplan",
        "ConfigMap/vidplan-settings",
        "Secret/vidplan-token",
    } <= set(manifests)
    for name, doc in manifests.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")
    kustomization = _yaml(DEPLOY / "k8s" / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / resource).is_file()


def test_a_broken_manifest_is_caught():
    import kubernetes_validate

    deployment = json.loads(json.dumps(_manifests()["Deployment/vidplan"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"  # must be int
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_k8s_deployment_probes_gpu_and_drain_are_consistent():
    manifests = _manifests()
    deployment, settings = manifests["Deployment/vidplan"], manifests["ConfigMap/vidplan-settings"]["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(settings["VIDPLAN_GRPC_PORT"]), "http": int(settings["VIDPLAN_HTTP_PORT"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    grace = _shutdown_grace(settings)
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + grace + 5
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace  # draining is not a restart
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # load + warm-up
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    refs = [r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]]
    assert refs == ["vidplan-settings", "vidplan-token"]
    assert list(manifests["Secret/vidplan-token"]["stringData"]) == ["VIDPLAN_TOKEN"]
    assert all(name in ServeSettings.model_fields for name in _settings_of(settings))
    assert variable("token") == "VIDPLAN_TOKEN"
    service = manifests["Service/vidplan"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert manifests["PodDisruptionBudget/vidplan"]["spec"]["selector"] == deployment["spec"]["selector"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)


# ---------------------------------------------------------------------------------------------- Ray Serve
def _serve_config() -> dict:
    return _yaml(DEPLOY / "ray" / "serve.yaml")[0]


def test_serve_config_builds_settings_and_names_the_raw_grpc_service():
    from vidplan_server.serving import ray_serve
    from vidplan_server.serving.settings import load_settings

    config = _serve_config()
    (app,) = config["applications"]
    assert app["import_path"] == "vidplan_server.serving.ray_serve:app_builder" and app["route_prefix"] == "/"
    settings = load_settings(app["args"])
    assert settings.ray_min_replicas >= 1 and settings.ray_gpus_per_replica == 1
    assert config["grpc_options"]["grpc_servicer_functions"] == [ray_serve.GRPC_SERVICER_FUNCTION]
    module, _, name = ray_serve.GRPC_SERVICER_FUNCTION.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    assert config["grpc_options"]["port"] == ServerConfig().grpc_port
    assert config["http_options"]["port"] == ServerConfig().http_port


def test_serve_config_is_a_valid_ray_serve_config():
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -e '.[scale]')")
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(_serve_config())


def test_rayservice_runs_the_same_serve_config_on_valid_pods():
    import kubernetes_validate

    from vidplan_server.serving.settings import load_settings

    rayservice, service = _yaml(DEPLOY / "ray" / "rayservice.yaml")
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == _serve_config()
    cluster = rayservice["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    settings = load_settings(_serve_config()["applications"][0]["args"])
    # The KubeRay CRD has no schema here; its pod templates are core Pods and are checked as such.
    templates = [cluster["headGroupSpec"]["template"], workers["template"]]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vidplan-ray"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        (container,) = template["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "vidplan-token"}}]  # the token, never in args
        assert template["spec"]["securityContext"]["runAsNonRoot"]
    (worker,) = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == settings.ray_gpus_per_replica
    assert workers["minReplicas"] >= settings.ray_min_replicas >= 1
    assert workers["maxReplicas"] * settings.ray_gpus_per_replica >= settings.ray_max_replicas
    assert workers["template"]["spec"]["terminationGracePeriodSeconds"] > settings.shutdown_grace
    assert cluster["rayVersion"] == _pinned_ray()
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    serve_config = _serve_config()
    assert ports == {"grpc": serve_config["grpc_options"]["port"], "http": serve_config["http_options"]["port"]}


def _pinned_ray() -> str:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["scale"]
    (pin,) = [e for e in extras if e.startswith("ray[serve]==")]
    return pin.split("==")[1]


def test_torchrun_job_is_valid_and_trains_with_one_process_per_gpu():
    import kubernetes_validate

    (job,) = _yaml(DEPLOY / "training" / "torchrun-job.yaml")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    nproc = int(next(a for a in args if a.startswith("--nproc-per-node=")).split("=")[1])
    assert container["command"] == ["torchrun"] and nproc == container["resources"]["limits"]["nvidia.com/gpu"]
    assert args[args.index("-m") + 1 : args.index("-m") + 3] == ["vidplan_server.cli", "train"]
    assert "--resume" in args  # a restarted pod continues
    from vidplan_server.cli import build_parser

    build_parser().parse_args(args[args.index("-m") + 2 :])  # the train options exist
