"""The Kubernetes manifests and the container build file, checked offline (no cluster, no docker daemon
here): the PyTorchJob against the training-operator's published CRD schema (vendored) and its
admission webhook's rules, the core objects with kubernetes-validate, the Dagster run-launcher section
with Dagster's instance schema, and both sides against each other and against the run spec."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import enter_project, project_params

from mai_models.cli import main
from mai_models.lm import k8s_manifests as k8s
from mai_models.lm.launch import ENTRY_MODULE, torchrun_prefix
from mai_models.lm.pretrain import UPSTREAM
from mai_models.lm.run_spec import RunSpec
from mai_models.lm.train_config import TrainConfig
from mai_models.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "infra" / "k8s" / "schemas" / "kubeflow.org_pytorchjobs.yaml"
IMAGE = "ghcr.io/mai-foundry/mai-foundry:0.1.0"
KUBERNETES = "1.34.0"  # the API version the core objects are validated against
TWO_NODES = TrainConfig(
    preset="tiny",
    parallel={"expert": 4},
    launch={"nproc_per_node": 2, "nnodes": 2, "rdzv_endpoint": "127.0.0.1:29500"},
    micro_batch_size=2,
    global_batch_size=8,
)
# (train config, gpus per node): two CPU nodes, one node of two GPUs.
LAYOUTS = {
    "two-cpu-nodes": (TWO_NODES, 0),
    "one-gpu-node": (TrainConfig(preset="tiny", launch={"nproc_per_node": 2}, global_batch_size=8), 2),
}


def _docs(cfg: TrainConfig, cluster: k8s.Cluster) -> dict[str, list[dict[str, Any]]]:
    """Each rendered file parsed back, as kubectl would read it."""
    return {name: list(yaml.safe_load_all(text)) for name, text in k8s.render(cfg, cluster).items()}


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected, as the API server's strict field validation does
    (it prunes or refuses them; without this, a misspelt field would pass)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Validator:
    crd = yaml.load(CRD.read_text(), Loader=yaml.CSafeLoader)
    assert crd["spec"]["group"] == "kubeflow.org" and crd["spec"]["names"]["kind"] == "PyTorchJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # The published schema must itself be a valid schema, or validating against it proves nothing.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _webhook_errors(job: dict[str, Any]) -> list[str]:
    """The training-operator's admission rules (v1.9.0 pkg/webhooks/pytorch/pytorchjob_webhook.go)."""
    errors = []
    name = job["metadata"]["name"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        errors.append("metadata.name is not a DNS-1035 label")
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        if role not in ("Master", "Worker"):
            errors.append(f"replica type {role}")
        containers = replica["template"]["spec"]["containers"]
        if any(not c.get("image") for c in containers):
            errors.append(f"{role}: a container without an image")
        if not any(c["name"] == "pytorch" for c in containers):
            errors.append(f"{role}: no container named pytorch")
        if role == "Master" and replica.get("replicas") != 1:
            errors.append("Master replicas must be 1")
        if role == "Worker" and replica.get("replicas", 1) < 1:
            errors.append("Worker replicas must be at least 1")
    return errors


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pytorchjob_matches_the_published_crd_and_webhook(layout: str, crd_validator) -> None:
    cfg, gpus = LAYOUTS[layout]
    _, job = _docs(cfg, k8s.Cluster(image=IMAGE, gpus_per_node=gpus))["pytorchjob.yaml"]
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in crd_validator.iter_errors(job)]
    assert errors == []
    assert _webhook_errors(job) == []
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        # The pod template against Kubernetes' own (strict) PodTemplate schema, beyond the CRD's copy.
        pod = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": replica["template"],
        }
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    resources = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"]
    assert resources.get("limits", {}).get("nvidia.com/gpu", 0) == gpus


def test_the_validators_reject_what_a_cluster_would(crd_validator) -> None:
    """The checks above have teeth: a misspelt field, a wrong type and a second master all fail."""
    _, job = _docs(TWO_NODES, k8s.Cluster(image=IMAGE))["pytorchjob.yaml"]
    typo = copy.deepcopy(job)
    container = typo["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "1"
    for bad in (typo, wrong_type):
        assert not crd_validator.is_valid(bad)
    two_masters = copy.deepcopy(job)
    two_masters["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    assert _webhook_errors(two_masters) == ["Master replicas must be 1"]
    claim = _docs(TWO_NODES, k8s.Cluster(image=IMAGE))["workspace.yaml"][0]
    claim["spec"]["accessMode"] = claim["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(claim, KUBERNETES, strict=True)


def test_core_objects_are_valid_kubernetes() -> None:
    docs = _docs(TWO_NODES, k8s.Cluster(image=IMAGE, storage_class="nfs-rwx"))
    core = [*docs["workspace.yaml"], docs["pytorchjob.yaml"][0]]
    assert [d["kind"] for d in core] == ["PersistentVolumeClaim", "ServiceAccount", "ConfigMap"]
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    claim = core[0]["spec"]
    # Every node of a job mounts the claim at once.
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"] == "nfs-rwx"


def test_the_job_runs_the_spec_it_carries_on_the_shared_workspace(monkeypatch) -> None:
    cluster = k8s.Cluster(image=IMAGE, name="tiny-moe")
    docs = _docs(TWO_NODES, cluster)
    spec_map, job = docs["pytorchjob.yaml"]
    spec = RunSpec.model_validate_json(spec_map["data"][k8s.SPEC_FILE])  # as the entry point reads it
    launch = spec.train.launch
    # The run is the configured one; only the rendezvous is the operator's master service.
    assert spec.train.model_dump(exclude={"launch"}) == TWO_NODES.model_dump(exclude={"launch"})
    assert (launch.nnodes, launch.nproc_per_node) == (2, 2)
    assert (launch.rdzv_endpoint, launch.rdzv_id) == ("tiny-moe-master-0:23456", "tiny-moe")

    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert sum(r["replicas"] for r in replicas.values()) == launch.nnodes
    assert job["spec"]["nprocPerNode"] == str(launch.nproc_per_node)
    pods = [r["template"]["spec"] for r in replicas.values()]
    for pod in pods:
        (container,) = pod["containers"]
        spec_path = PurePosixPath(container["command"][-1])
        assert container["command"] == [
            str(k8s.CONTAINER_PYTHON),
            *torchrun_prefix(launch)[1:],
            "-m",
            ENTRY_MODULE,
            str(spec_path),
        ]
        assert f"--nnodes={launch.nnodes}" in container["command"]
        (port,) = container["ports"]
        assert (port["name"], port["containerPort"]) == ("pytorchjob-port", 23456)
        mounts = {m["name"]: m for m in container["volumeMounts"] if m["name"] != k8s.WORKSPACE_VOLUME}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert spec_path.parent == PurePosixPath(mounts["spec"]["mountPath"])
        assert volumes["spec"]["configMap"]["name"] == spec_map["metadata"]["name"]
        assert volumes[k8s.WORKSPACE_VOLUME]["persistentVolumeClaim"]["claimName"] == cluster.claim

    # The Dagster run pods mount the same claim at the same paths, in the same image and namespace.
    launcher = docs["dagster-run-launcher.yaml"][0]["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = launcher["config"]
    container = pods[0]["containers"][0]
    job_mounts = [m for m in container["volumeMounts"] if m["name"] == k8s.WORKSPACE_VOLUME]
    camel = {"mount_path": "mountPath", "sub_path": "subPath", "name": "name"}
    assert [{camel[k]: v for k, v in m.items()} for m in config["volume_mounts"]] == job_mounts
    assert config["volumes"] == [
        {"name": k8s.WORKSPACE_VOLUME, "persistent_volume_claim": {"claim_name": cluster.claim}}
    ]
    assert (config["job_image"], config["job_namespace"]) == (
        container["image"],
        job["metadata"]["namespace"],
    )
    assert config["service_account_name"] == pods[0]["serviceAccountName"]

    # What a run pod's settings make of its environment is where the job's spec reads and writes.
    for name in [n for n in os.environ if n.startswith(("MAI_", "DAGSTER_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MAI_CONFIG", "/nonexistent/mai.yaml")
    for entry in config["env_vars"]:
        monkeypatch.setenv(*entry.split("=", 1))
    settings = load_settings()
    assert {k8s.TOKENIZER_STEP, k8s.SHARDS_STEP} == set(UPSTREAM)
    assert spec.tokenizer_dir == settings.data_dir / k8s.TOKENIZER_STEP
    assert spec.shards_dir == settings.data_dir / k8s.SHARDS_STEP
    assert spec.peak_cache == settings.state_dir / "cpu_peaks.json"
    assert spec.work_dir.is_relative_to(settings.home)
    shared = [PurePosixPath(m["mountPath"]) for m in job_mounts]
    for path in (spec.tokenizer_dir, spec.shards_dir, spec.work_dir, spec.peak_cache):
        assert any(PurePosixPath(path).is_relative_to(m) for m in shared), path


def test_dagster_loads_the_run_launcher_section(tmp_path: Path) -> None:
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    text = k8s.render(TWO_NODES, k8s.Cluster(image=IMAGE))["dagster-run-launcher.yaml"]
    (tmp_path / "dagster.yaml").write_text(text)
    value, _ = dagster_instance_config(str(tmp_path))
    assert value["run_launcher"] == yaml.safe_load(text)["run_launcher"]
    (tmp_path / "dagster.yaml").write_text(text.replace("class: K8sRunLauncher", "klass: K8sRunLauncher"))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "ghcr.io/org/mai-foundry:latest"], "pin a release tag or a digest"),
        (["--image", "ghcr.io/org/mai-foundry"], "pin a release tag or a digest"),
        (["--image", "ghcr.io/org/mai-foundry:<tag>"], "is not an image reference"),
        (["--image", IMAGE, "--name", "Pretrain_1"], "must be a DNS label"),
        (["--image", IMAGE, "--gpus-per-node", "8"], "one rank per GPU"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    _enter(tmp_path, monkeypatch)
    assert main(["lm", "k8s", *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _readme_command() -> list[str]:
    """The `mai lm k8s` command of infra/README.md, as a shell would split it."""
    text = (REPO / "infra" / "README.md").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("mai lm k8s ")]
    return shlex.split(line)[1:]


def test_the_readme_command_renders_from_params(tmp_path: Path, monkeypatch, capsys) -> None:
    _enter(tmp_path, monkeypatch)
    argv = _readme_command()
    assert main(argv) == 0
    out = Path(argv[argv.index("-o") + 1])  # relative: under the project, the working directory
    files = ("workspace.yaml", "pytorchjob.yaml", "dagster-run-launcher.yaml")
    assert capsys.readouterr().out.splitlines() == [f"wrote {out / name}" for name in files]
    out = tmp_path / out
    spec_map, job = yaml.safe_load_all((out / "pytorchjob.yaml").read_text())
    spec = RunSpec.model_validate_json(spec_map["data"][k8s.SPEC_FILE])
    # params.yaml, with the command's overrides.
    launch, lm = spec.train.launch, project_params()["lm"]
    assert (launch.nnodes, launch.nproc_per_node, spec.train.global_batch_size) == (4, 8, 256)
    assert (spec.train.preset, spec.train.steps) == (lm["preset"], lm["steps"])
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == 3
    assert replicas["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 8
    }


def test_cli_takes_a_digest_and_refuses_a_layout_that_cannot_start(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    _enter(tmp_path, monkeypatch)
    digest = "ghcr.io/org/mai-foundry@sha256:" + "ab" * 32
    assert main(["lm", "k8s", "--image", digest, "-o", str(tmp_path / "ok")]) == 0
    _, job = yaml.safe_load_all((tmp_path / "ok" / "pytorchjob.yaml").read_text())
    assert (
        job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] == digest
    )
    # Refused before anything is written: 3 nodes cannot hold expert parallelism 2.
    bad = ["-S", "lm.launch.nnodes=3", "-S", "lm.parallel.expert=2"]
    assert main(["lm", "k8s", "--image", digest, *bad, "-o", str(tmp_path / "bad")]) == 2
    assert "not divisible" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _enter(root: Path, monkeypatch) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(project_params(), sort_keys=False))
    enter_project(monkeypatch, root)


# --- the container build file -------------------------------------------------------------------


def _dockerfile() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(REPO / "infra" / "docker" / "Dockerfile"))  # buildkit's own parser


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate, glob = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_only_what_exists_and_the_context_keeps(tmp_path: Path) -> None:
    commands = _dockerfile()
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    copied = [src for c in commands if c.cmd == "COPY" for src in c.value[:-1]]
    assert copied, "the Dockerfile copies nothing"
    for src in copied:
        assert (REPO / src).exists(), src
        assert not _ignored(src.rstrip("/"), patterns), f"{src} is excluded by .dockerignore"
    # A file inside a copied folder is kept; local state, environments and git are not sent.
    assert not _ignored("mai_models/lm/k8s_manifests.py", patterns)
    for local in (
        ".venv/bin/python",
        ".venv-dvc",
        ".mai/state",
        "data/token_shards",
        ".git/HEAD",
        "dvc.lock",
        ".dvc/cache",
        ".dvc/config.local",
        "mai.yaml",
        "mai_models/__pycache__/x.pyc",
    ):
        assert _ignored(local, patterns), local


def test_dockerfile_installs_what_make_install_does() -> None:
    commands = _dockerfile()
    makefile = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) [:?]?= (\S+)$", makefile, flags=re.M))
    (base,) = [c.value[0] for c in commands if c.cmd == "FROM"]
    assert base == "python:3.11-slim" and variables["PYTHON"] == "python3.11"
    (workdir,) = [c.value[0] for c in commands if c.cmd == "WORKDIR"]
    assert PurePosixPath(workdir) == k8s.CONTAINER_ROOT  # where the manifests run the project from
    env = dict(zip(*[iter(v for c in commands if c.cmd == "ENV" for v in c.value)] * 2, strict=True))
    assert env["MAI_ROOT"] == str(k8s.CONTAINER_ROOT)
    assert env["PATH"].split(":")[0] == str(k8s.CONTAINER_PYTHON.parent)

    runs = [shlex.split(c.value[0]) for c in commands if c.cmd == "RUN"]
    pip = [cmd for run in runs for cmd in _split(run) if cmd[1:2] == ["install"] and "pip" in cmd[0]]
    (torch_pin,) = re.findall(r"install -qq (torch==\S+)", makefile)
    assert [c for c in pip if torch_pin in c], f"the image does not install {torch_pin}"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{torch_pin}"' in pyproject
    assert ["-c", variables["CONSTRAINTS"], "-e", "."] == _after_quiet(_one(pip, ".venv/bin/pip", "-e"))
    assert ["-r", variables["DVC_LOCK"]] == _after_quiet(_one(pip, ".venv-dvc/bin/pip", "-r"))
    # The venvs the Makefile builds, at the root the manifests use.
    assert ["python", "-m", "venv", ".venv"] in [c for run in runs for c in _split(run)]
    assert ["python", "-m", "venv", ".venv-dvc"] in [c for run in runs for c in _split(run)]
    apt = [c for run in runs for c in _split(run) if "apt-get" in c and "install" in c]
    assert "flite" in makefile and any("flite" in c for c in apt)
    # The image's default command serves the Dagster code location pyproject.toml names.
    (cmd,) = [c.value for c in commands if c.cmd == "CMD"]
    assert re.search(rf'module_name = "{re.escape(cmd[cmd.index("--module-name") + 1])}"', pyproject)


def _split(words: list[str]) -> list[list[str]]:
    """A RUN line's commands, split at && (leading VAR=value assignments dropped)."""
    out, current = [], []
    for word in [*words, "&&"]:
        if word == "&&":
            while current and re.fullmatch(r"\w+=\S*", current[0]):
                current.pop(0)
            out.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in out if c]


def _one(pip: list[list[str]], binary: str, flag: str) -> list[str]:
    (found,) = [c for c in pip if c[0] == binary and flag in c]
    return found


def _after_quiet(cmd: list[str]) -> list[str]:
    return [w for w in cmd[2:] if w != "-qq"]


def test_the_vendored_crd_is_the_published_file() -> None:
    """Below its provenance header the file is the release's CRD as published (its sha256 is in the
    header, taken from the release tag): nobody loosened the schema the job is checked against."""
    lines = CRD.read_bytes().splitlines(keepends=True)
    header = [ln.decode() for ln in lines if ln.startswith(b"#")][:4]
    (digest,) = re.findall(r"sha256 of the lines below: ([0-9a-f]{64})", "".join(header))
    assert hashlib.sha256(b"".join(lines[len(header) :])).hexdigest() == digest
