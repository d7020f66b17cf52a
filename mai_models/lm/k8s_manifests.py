"""Kubernetes manifests for pretraining, rendered from the ``lm`` section of params.yaml: a Kubeflow
PyTorchJob that runs the same torchrun entry as ``mai lm train`` (``-m mai_models.lm.entry
SPEC.json``), and the ``run_launcher`` section of the Dagster instance (``dagster-k8s``'s
K8sRunLauncher) that runs every other step in pods of the same image.

Both sides share one workspace: a ReadWriteMany PersistentVolumeClaim mounted at the same paths under
the image's project root (``data/``, ``.mai/``, ``.dvc/cache``). The Dagster run pods materialise
``bpe_tokenizer`` and ``token_shards`` there; the PyTorchJob's run spec, carried by a ConfigMap,
points at those directories and keeps its checkpoints under ``.mai/work`` on the same claim, so a
restarted pod resumes from the last checkpoint."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mai_models.errors import MaiUserError
from mai_models.lm.launch import ENTRY_MODULE, torchrun_prefix
from mai_models.lm.run_spec import RunSpec
from mai_models.lm.train_config import LaunchConfig, TrainConfig

# Where infra/docker/Dockerfile puts the project (WORKDIR) and its virtual environment.
CONTAINER_ROOT = PurePosixPath("/opt/mai-foundry")
CONTAINER_PYTHON = CONTAINER_ROOT / ".venv" / "bin" / "python"
SPEC_DIR = PurePosixPath("/etc/mai-foundry")
SPEC_FILE = "spec.json"
# The training-operator names the master's service <job>-master-0 and opens the container port named
# pytorchjob-port on it (default 23456); the c10d rendezvous runs there.
CONTAINER = "pytorch"
PORT_NAME = "pytorchjob-port"
PORT = 23456
WORKSPACE_VOLUME = "workspace"
# (subPath on the claim, path under the project root): the state a step writes, nothing from the image.
WORKSPACE_MOUNTS = (("data", "data"), ("state", ".mai"), ("dvc-cache", ".dvc/cache"))
# The pretraining step's inputs (mai_models.lm.pretrain.UPSTREAM) as Settings lay them out: data/<step>.
TOKENIZER_STEP, SHARDS_STEP = "bpe_tokenizer", "token_shards"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:(?P<domain>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}))?"
)


@dataclass(frozen=True)
class Cluster:
    """Where the manifests go: the image every pod runs, the namespace and the shared claim."""

    image: str
    namespace: str = "mai-foundry"
    name: str = "mai-moe-pretrain"
    gpus_per_node: int = 0
    storage_size: str = "500Gi"
    storage_class: str | None = None
    claim: str = "mai-workspace"
    service_account: str = "mai-foundry"
    # Settings and credentials of the run pods (DAGSTER_PG_*, MLFLOW_TRACKING_URI, MAI_DVC_REMOTE,
    # AWS_*): a Secret the cluster's operator creates, never rendered here.
    secret: str = "mai-foundry"
    instance_config_map: str = "dagster-instance"


def check_image(image: str) -> str:
    """A pullable, pinned reference: a release tag or a digest (``latest`` moves under a running job)."""
    match = _IMAGE.fullmatch(image)
    if match is None:
        raise MaiUserError(f"--image {image!r} is not an image reference (registry/name:tag)")
    if not (match["tag"] or match["digest"]) or match["tag"] == "latest":
        raise MaiUserError(f"--image {image!r}: pin a release tag or a digest, not latest or no tag")
    return image


def check_cluster(cluster: Cluster, nnodes: int) -> None:
    check_image(cluster.image)
    for what, value in (("namespace", cluster.namespace), ("name", cluster.name)):
        if not _DNS_LABEL.fullmatch(value) or len(value) > 63:
            raise MaiUserError(f"--{what} {value!r} must be a DNS label (a-z, 0-9, '-', from a letter)")
    # The operator names one service per pod: <name>-worker-<index> must stay a 63-character label.
    longest = f"{cluster.name}-worker-{max(nnodes - 2, 0)}"
    if len(longest) > 63:
        raise MaiUserError(f"--name {cluster.name!r} is too long: its pod name {longest} exceeds 63")
    if cluster.gpus_per_node < 0:
        raise MaiUserError(f"--gpus-per-node must be >= 0, got {cluster.gpus_per_node}")


def container_path(relative: str) -> PurePosixPath:
    return CONTAINER_ROOT / relative


def run_spec(cfg: TrainConfig, cluster: Cluster) -> RunSpec:
    """The ranks' spec with the container's paths; the rendezvous is the master's service."""
    check_layout(cfg)
    # Only the process layout carries over: the operator starts the pods, so any other launch setting
    # of params.yaml (another engine, a local endpoint or node rank) does not apply. Every pod runs the
    # same command; the master hosts the store because the endpoint is its own hostname.
    launch = LaunchConfig(
        nproc_per_node=cfg.launch.nproc_per_node,
        nnodes=cfg.launch.nnodes,
        threads_per_rank=cfg.launch.threads_per_rank,
        rdzv_endpoint=f"{cluster.name}-master-0:{PORT}" if cfg.launch.nnodes > 1 else None,
        rdzv_id=cluster.name,
    )
    data, home = container_path("data"), container_path(".mai")
    return RunSpec(
        train=cfg.model_copy(update={"launch": launch}),
        shards_dir=Path(data / SHARDS_STEP),
        tokenizer_dir=Path(data / TOKENIZER_STEP),
        work_dir=Path(home / "work" / "pytorchjob" / cluster.name),
        peak_cache=Path(home / "state" / "cpu_peaks.json"),
    )


def check_layout(cfg: TrainConfig) -> None:
    """The layout checks ``mai lm train`` makes before launch, without the tokenizer at hand."""
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.presets import PRESETS
    from mai_models.lm.train_config import resolve_model_config

    if cfg.parallel.pipeline > 1:
        raise MaiUserError("lm.parallel.pipeline > 1 is not supported by the training loop yet; use 1")
    # None of the layout rules reads the vocabulary, so the preset's stands in for the tokenizer's.
    vocab = PRESETS[cfg.preset].model.vocab_size if cfg.preset in PRESETS else 1
    parallel = ParallelConfig(
        tensor_model_parallel_size=cfg.parallel.tensor,
        pipeline_model_parallel_size=cfg.parallel.pipeline,
        expert_model_parallel_size=cfg.parallel.expert,
    )
    parallel.validate(cfg.launch.world_size, resolve_model_config(cfg, vocab))
    cfg.micro_batches_per_step(cfg.launch.world_size)


def torchrun_command(launch: LaunchConfig) -> list[str]:
    """``mai lm train``'s torchrun command with the image's interpreter and the mounted spec."""
    _, *flags = torchrun_prefix(launch)
    return [str(CONTAINER_PYTHON), *flags, "-m", ENTRY_MODULE, str(SPEC_DIR / SPEC_FILE)]


def _labels(cluster: Cluster, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mai-foundry",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": cluster.name,
    }


def _meta(cluster: Cluster, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": cluster.namespace, "labels": _labels(cluster, component)}


def workspace_mounts() -> list[dict[str, str]]:
    """The claim's mounts, the same in the Dagster run pods and in every PyTorchJob pod."""
    return [
        {"name": WORKSPACE_VOLUME, "mountPath": str(container_path(path)), "subPath": sub}
        for sub, path in WORKSPACE_MOUNTS
    ]


def workspace(cluster: Cluster) -> list[dict[str, Any]]:
    """The shared claim (ReadWriteMany: the nodes of a job mount it at once) and the service account."""
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": cluster.storage_size}},
    }
    if cluster.storage_class:
        claim["storageClassName"] = cluster.storage_class
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(cluster, cluster.claim, "workspace"),
            "spec": claim,
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(cluster, cluster.service_account, "workspace"),
        },
    ]


def _pod_template(spec: RunSpec, cluster: Cluster, spec_map: str) -> dict[str, Any]:
    launch = spec.train.launch
    resources: dict[str, Any] = {
        "requests": {"cpu": str(launch.nproc_per_node * (launch.threads_per_rank or 1))}
    }
    if cluster.gpus_per_node:
        resources["limits"] = {"nvidia.com/gpu": cluster.gpus_per_node}
    container = {
        "name": CONTAINER,
        "image": cluster.image,
        "imagePullPolicy": "IfNotPresent",
        "command": torchrun_command(launch),
        "env": [{"name": "MAI_ROOT", "value": str(CONTAINER_ROOT)}],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": [
            *workspace_mounts(),
            {"name": "spec", "mountPath": str(SPEC_DIR), "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    return {
        "metadata": {"labels": _labels(cluster, "pretrain")},
        "spec": {
            "serviceAccountName": cluster.service_account,
            "containers": [container],
            "volumes": [
                {"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": cluster.claim}},
                {"name": "spec", "configMap": {"name": spec_map}},
                # The ranks of a node share tensors through /dev/shm; a pod's default is 64 MiB.
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def pytorchjob(cfg: TrainConfig, cluster: Cluster) -> list[dict[str, Any]]:
    """The spec's ConfigMap and the PyTorchJob: one Master pod and nnodes - 1 Workers, one torchrun each."""
    launch = cfg.launch
    if cluster.gpus_per_node and cluster.gpus_per_node != launch.nproc_per_node:
        raise MaiUserError(
            f"--gpus-per-node {cluster.gpus_per_node} != lm.launch.nproc_per_node "
            f"{launch.nproc_per_node}: one rank per GPU"
        )
    check_cluster(cluster, launch.nnodes)
    spec = run_spec(cfg, cluster)
    spec_map = f"{cluster.name}-spec"
    template = _pod_template(spec, cluster, spec_map)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if launch.nnodes > 1:
        replicas["Worker"] = {
            "replicas": launch.nnodes - 1,
            "restartPolicy": "OnFailure",
            "template": template,
        }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(cluster, spec_map, "pretrain"),
            "data": {SPEC_FILE: spec.model_dump_json(indent=2) + "\n"},
        },
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": _meta(cluster, cluster.name, "pretrain"),
            "spec": {
                "nprocPerNode": str(launch.nproc_per_node),
                # Pods stay after the job ends, so their logs can be read; the checkpoints are on the claim.
                "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
                "pytorchReplicaSpecs": replicas,
            },
        },
    ]


def run_launcher(cluster: Cluster) -> dict[str, Any]:
    """The dagster.yaml section that starts each Dagster run as a Kubernetes Job of the same image,
    with the claim mounted as in the PyTorchJob (dagster-k8s takes snake_case Kubernetes fields)."""
    check_image(cluster.image)
    mounts = [
        {"name": m["name"], "mount_path": m["mountPath"], "sub_path": m["subPath"]}
        for m in workspace_mounts()
    ]
    return {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "job_image": cluster.image,
                "image_pull_policy": "IfNotPresent",
                "job_namespace": cluster.namespace,
                "service_account_name": cluster.service_account,
                "instance_config_map": cluster.instance_config_map,
                "load_incluster_config": True,
                "env_vars": [f"MAI_ROOT={CONTAINER_ROOT}"],
                "env_secrets": [cluster.secret],
                "volumes": [
                    {"name": WORKSPACE_VOLUME, "persistent_volume_claim": {"claim_name": cluster.claim}}
                ],
                "volume_mounts": mounts,
                "labels": _labels(cluster, "dagster-run"),
                "fail_pod_on_run_failure": True,
            },
        }
    }


class _Dumper(yaml.SafeDumper):
    """Block-literal multi-line strings (the spec reads as JSON) and no anchors: every replica's pod
    template is written out in full, as ``kubectl get -o yaml`` would show it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _str)

HEADER = "# Rendered by `mai lm k8s` (mai_models/lm/k8s_manifests.py) from params.yaml's lm section.\n"


def render(cfg: TrainConfig, cluster: Cluster) -> dict[str, str]:
    """File name -> YAML text for the three files ``mai lm k8s`` writes."""
    documents = {
        "workspace.yaml": workspace(cluster),
        "pytorchjob.yaml": pytorchjob(cfg, cluster),
        "dagster-run-launcher.yaml": [run_launcher(cluster)],
    }
    return {
        name: HEADER + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=110)
        for name, docs in documents.items()
    }


def write_manifests(cfg: TrainConfig, cluster: Cluster, out_dir: Path) -> list[Path]:
    texts = render(cfg, cluster)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image", required=True, help="image every pod runs, e.g. ghcr.io/org/mai-foundry:0.1.0"
    )
    parser.add_argument("-o", "--output", default="k8s", help="directory for the three YAML files")
    parser.add_argument("--namespace", default=Cluster.namespace)
    parser.add_argument("--name", default=Cluster.name, help="the PyTorchJob's name (also its work dir)")
    parser.add_argument(
        "--gpus-per-node", type=int, default=0, help="0: CPU pods; else lm.launch.nproc_per_node"
    )
    parser.add_argument("--storage-size", default=Cluster.storage_size, help="size of the workspace claim")
    parser.add_argument("--storage-class", default=None, help="a ReadWriteMany storage class")
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter"
    )


def cluster_from_args(args: argparse.Namespace) -> Cluster:
    return Cluster(
        image=args.image,
        namespace=args.namespace,
        name=args.name,
        gpus_per_node=args.gpus_per_node,
        storage_size=args.storage_size,
        storage_class=args.storage_class,
    )
