"""Drive the DVC CLI, which lives in its own tool environment (its hydra pins an antlr4 that
breaks Dagster's asset selection). Calls are serialised with a file lock because DVC holds a
repository-wide lock and fails rather than waits."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from mai_models.errors import MaiUserError, ServiceUnavailable
from mai_models.settings import Settings

REMOTE_NAME = "mai"
LOCK_EXCLUDE = "/dvc.lock"
# A push that fails is tried again this many times in all, waiting BACKOFF_S, then twice that, ...: an
# object store that restarts comes back within seconds, a longer outage is reported (and retried by the
# orchestrator) rather than waited out here.
PUSH_ATTEMPTS = 3
PUSH_BACKOFF_S = 2.0


class Dvc:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.root
        self._remote_ready = False

    def env(self) -> dict[str, str]:
        env = self.settings.subprocess_env()
        # Stage commands call `mai`; make the interpreter that runs us the one they find first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("DVC_NO_ANALYTICS", "1")
        return env

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        with open(self.settings.home / "dvc.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def run(self, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
        with self._locked():
            return self._dvc(*args, check=check, capture=capture)

    def _dvc(self, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
        """One DVC command; the caller holds the lock."""
        command = [self.settings.resolve_dvc_bin(), *args]
        done = subprocess.run(command, cwd=self.root, env=self.env(), capture_output=capture, text=True)
        if check and done.returncode != 0:
            raise MaiUserError(f"dvc {' '.join(args)} failed: {_reason(done)}")
        return done

    def ensure_remote(self) -> None:
        """Point the default remote at the configured URL (local, so the URL never lands in git)."""
        if self._remote_ready:
            return
        # Under the lock as a whole: steps of one run commit from several processes, and each would
        # otherwise find no .dvc directory and run `dvc init`, or rewrite the config, at the same time.
        with self._locked():
            self._configure_remote()
        self._remote_ready = True

    def _configure_remote(self) -> None:
        has_git = (self.root / ".git").exists()
        url = str(self.settings.dvc_remote)
        # With a machine-local remote, dvc.lock describes outputs nobody else can fetch, so by default it
        # stays out of git: DVC runs without git integration (it refuses to write a git-ignored lock
        # otherwise) and git ignores the lock through the clone's own .git/info/exclude. With a shared
        # remote (s3://...), or dvc_git on, DVC uses git and teams commit dvc.lock, as DVC recommends.
        machine_local = bool(url) and "://" not in url
        use_git = has_git and (
            self.settings.dvc_git if self.settings.dvc_git is not None else not machine_local
        )
        if not (self.root / ".dvc").is_dir():
            self._dvc("init", *([] if has_git else ["--no-scm"]))
        values = self._local_config()
        no_scm = not use_git
        if (values.get(("[core]", "no_scm")) == "true") != no_scm:
            if no_scm:
                self._dvc("config", "--local", "core.no_scm", "true")
            else:
                self._dvc("config", "--local", "--unset", "core.no_scm")
        if has_git:
            self._exclude_lock(no_scm)
        if machine_local:
            Path(url).mkdir(parents=True, exist_ok=True)
        remote_section = f"['remote \"{REMOTE_NAME}\"']"
        if values.get(("[core]", "remote")) != REMOTE_NAME or values.get((remote_section, "url")) != url:
            self._dvc("remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)
            values.pop((remote_section, "endpointurl"), None)  # `remote add --force` drops the section
        # An S3-compatible store is reached through its endpoint; credentials stay in the environment.
        endpoint = self.settings.s3_endpoint_url if url.startswith("s3://") else None
        if values.get((remote_section, "endpointurl")) != endpoint:
            if endpoint:
                self._dvc("remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint)
            else:
                self._dvc("remote", "modify", "--local", "--unset", REMOTE_NAME, "endpointurl")

    def _local_config(self) -> dict[tuple[str, str], str]:
        """.dvc/config.local as (section, key) -> value: reading it saves a DVC call per asset."""
        local = self.root / ".dvc" / "config.local"
        values: dict[tuple[str, str], str] = {}
        section = ""
        for line in (local.read_text() if local.exists() else "").splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif "=" in line:
                key, _, value = line.partition("=")
                values[(section, key.strip())] = value.strip()
        return values

    def _exclude_lock(self, exclude: bool) -> None:
        exclude_file = self.root / ".git" / "info" / "exclude"
        lines = exclude_file.read_text().splitlines() if exclude_file.exists() else []
        if (LOCK_EXCLUDE in lines) == exclude:
            return
        lines = [*lines, LOCK_EXCLUDE] if exclude else [ln for ln in lines if ln != LOCK_EXCLUDE]
        exclude_file.parent.mkdir(parents=True, exist_ok=True)
        exclude_file.write_text("\n".join(lines) + "\n")

    def commit(self, stage: str) -> str:
        """Record a stage's existing outputs in the cache and dvc.lock without re-running it."""
        self.ensure_remote()
        with self._locked():  # read before another step's commit rewrites dvc.lock
            self._dvc("commit", "--force", stage)
            return self.out_hash(stage)

    def push(self, stage: str) -> None:
        """Send a committed stage's outputs to the remote, retrying with backoff. When the remote stays
        unreachable the error names it; the outputs and the DVC cache are kept, so a re-run pushes
        without rebuilding."""
        self.ensure_remote()
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            done = self.run("push", stage, check=False)
            if done.returncode == 0:
                return
            if attempt < PUSH_ATTEMPTS:
                time.sleep(PUSH_BACKOFF_S * 2 ** (attempt - 1))
        raise ServiceUnavailable(
            f"dvc push {stage} to remote {self.settings.dvc_remote} failed {PUSH_ATTEMPTS} times: "
            f"{_reason(done)} (outputs and DVC cache kept; re-run to push)"
        )

    def commit_and_push(self, stage: str) -> str:
        """Version what a stage's asset just produced and send it to the remote; returns its hash."""
        out_hash = self.commit(stage)
        self.push(stage)
        return out_hash

    def out_hash(self, stage: str) -> str:
        lock_path = self.root / "dvc.lock"
        try:
            lock = yaml.safe_load(lock_path.read_text()) or {}
        except FileNotFoundError as exc:
            raise MaiUserError(f"{lock_path} is missing after dvc commit {stage}") from exc
        outs = lock.get("stages", {}).get(stage, {}).get("outs", [])
        if not outs:
            raise MaiUserError(f"dvc.lock has no outputs for stage {stage}")
        return str(outs[0].get("md5") or outs[0].get("hash"))

    def status(self, *targets: str) -> str:
        return self.run("status", *targets).stdout


def _reason(done: subprocess.CompletedProcess[str]) -> str:
    """The line of DVC's output that says what went wrong."""
    lines = [ln.strip() for ln in ((done.stderr or "") + (done.stdout or "")).splitlines() if ln.strip()]
    at = next((i for i, ln in enumerate(lines) if "ERROR" in ln), None)
    if at is None:
        return lines[-1] if lines else "no output"
    # "... for following targets:" lists them on the next lines
    return " ".join(lines[at : at + 4]) if lines[at].endswith(":") else lines[at]


def restore_output(settings: Settings, out_hash: str, dest: Path) -> Path:
    """Copy a directory output that DVC versioned as ``out_hash`` (``<md5>.dir``) out of the local cache,
    or out of a local-directory remote: how an older model version is loaded after the work tree moved on.
    """
    import json
    import shutil

    def find(md5: str) -> Path | None:
        remote = str(settings.dvc_remote)
        roots = [settings.root / ".dvc" / "cache", *([Path(remote)] if "://" not in remote else [])]
        for root in roots:
            path = root / "files" / "md5" / md5[:2] / md5[2:]
            if path.exists():
                return path
        return None

    listing = find(out_hash)
    if listing is None or not out_hash.endswith(".dir"):
        raise MaiUserError(
            f"DVC output {out_hash} is in neither the local cache nor the remote; `mai dvc pull` it first"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for entry in json.loads(listing.read_text()):
        source = find(entry["md5"])
        if source is None:
            raise MaiUserError(
                f"DVC object {entry['md5']} of {out_hash} is missing from the cache and remote"
            )
        target = dest / entry["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return dest
