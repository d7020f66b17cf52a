"""Drive the DVC CLI, which lives in its own tool environment (its hydra pins an antlr4 that
breaks Dagster's asset selection). Calls are serialised with a file lock because DVC holds a
repository-wide lock and fails rather than waits."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from mai_models.errors import MaiUserError
from mai_models.settings import Settings

REMOTE_NAME = "mai"


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
        command = [self.settings.resolve_dvc_bin(), *args]
        with self._locked():
            done = subprocess.run(command, cwd=self.root, env=self.env(), capture_output=capture, text=True)
        if check and done.returncode != 0:
            lines = [ln for ln in ((done.stderr or "") + (done.stdout or "")).splitlines() if ln.strip()]
            reason = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "no output")
            raise MaiUserError(f"dvc {' '.join(args)} failed: {reason.strip()}")
        return done

    def ensure_remote(self) -> None:
        """Point the default remote at the configured URL (local, so the URL never lands in git)."""
        if self._remote_ready:
            return
        has_git = (self.root / ".git").exists()
        if not (self.root / ".dvc").is_dir():
            self.run("init", *([] if has_git else ["--no-scm"]))
        elif not has_git:
            # A deployed image often ships the code without .git; DVC then needs to be told.
            self.run("config", "--local", "core.no_scm", "true")
        url = str(self.settings.dvc_remote)
        if url and "://" not in url:
            Path(url).mkdir(parents=True, exist_ok=True)
        if not self._remote_configured(url):
            self.run("remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)
        self._remote_ready = True

    def _remote_configured(self, url: str) -> bool:
        """Whether .dvc/config.local already makes ``url`` the default remote (saves a DVC call per asset)."""
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
        remote_section = f"['remote \"{REMOTE_NAME}\"']"
        return values.get(("[core]", "remote")) == REMOTE_NAME and values.get((remote_section, "url")) == url

    def commit(self, stage: str) -> str:
        """Record a stage's existing outputs in the cache and dvc.lock without re-running it."""
        self.ensure_remote()
        self.run("commit", "--force", stage)
        return self.out_hash(stage)

    def push(self, stage: str) -> None:
        self.ensure_remote()
        self.run("push", stage)

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
