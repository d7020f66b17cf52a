"""A private single-node Slurm cluster on this machine: munged, slurmctld and slurmd started from a
slurm.conf of our own (``SLURM_CONF`` points clients at it, so nothing is written under /etc), each
daemon stopped by its PID. Tests and local trials of the Slurm launcher use it; on a real cluster
sbatch already knows its controller and none of this runs."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from mai_models.errors import MaiUserError
from mai_models.services.process import ServiceProcess, free_port, log_tail

SBIN = Path("/usr/sbin")
MUNGE_USER = "munge"
PARTITION = "debug"


def node_memory_mb() -> int:
    """What slurmd may offer: a bit under the machine's memory (more than it has drains the node)."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.9)


def slurm_conf(root: Path, munge_socket: Path, host: str) -> str:
    # Daemons run in the foreground with no log file set: they log to stderr, which ServiceProcess keeps.
    return f"""\
ClusterName=mai
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
ReturnToService=2
# scancel sends SIGTERM, then SIGKILL after this many seconds (the default 30 s slows every cancel).
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={node_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """``with SlurmCluster(root) as cluster:`` one idle node; clients reach it with ``cluster.env``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.daemons: list[ServiceProcess] = []
        self._munge_dir: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, a launcher) needs in its environment to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        for daemon in ("munged", "mungekey", "slurmctld", "slurmd"):
            if not (SBIN / daemon).exists():
                raise MaiUserError(
                    f"{SBIN / daemon} not found: install slurm-wlm and munge (`make system-tools` as root)"
                )
        if os.geteuid() != 0:
            raise MaiUserError("a private Slurm cluster needs root (slurmd starts jobs as their users)")
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        try:
            munge_socket = self._start_munge()
            host = socket.gethostname().split(".")[0]
            self.conf.write_text(slurm_conf(self.root, munge_socket, host))
            for daemon in ("slurmctld", "slurmd"):
                command = [str(SBIN / daemon), "-D", "-f", str(self.conf)]
                log = self.root / "log" / f"{daemon}.log"
                # SLURM_CONF in their environment marks what they start (slurmstepd) as this cluster's.
                self._start(ServiceProcess(daemon, command, log, env=self.client_env()))
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, daemon: ServiceProcess) -> None:
        daemon.start()
        self.daemons.append(daemon)

    def _start_munge(self) -> Path:
        """munged as its own user, with a key of its own. Its files live in a short path under /tmp
        that the munge user can reach (a socket path holds at most 107 bytes; pytest's dirs are 0700)."""
        user = pwd.getpwnam(MUNGE_USER)
        self._munge_dir = Path(tempfile.mkdtemp(prefix="mai-munge-"))
        self._munge_dir.chmod(0o755)
        key = self._munge_dir / "munge.key"
        subprocess.run([str(SBIN / "mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
        for path in (self._munge_dir, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        sock = self._munge_dir / "munge.socket"
        # setpriv drops to the munge user and execs munged in place, so the PID we hold is munged's.
        munged = ServiceProcess(
            "munged",
            [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                str(SBIN / "munged"),
                "--foreground",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={self._munge_dir / 'munged.pid'}",
                f"--log-file={self._munge_dir / 'munged.log'}",
                f"--seed-file={self._munge_dir / 'munged.seed'}",
            ],
            self.root / "log" / "munged.log",
        )
        self._start(munged)
        munged.wait_until(sock.exists, timeout=10)
        return sock

    def _sinfo(self) -> str:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=self.client_env(), capture_output=True, text=True
        )
        return done.stdout.strip()

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if not daemon.running():
                    raise MaiUserError(
                        f"{daemon.name} exited while the cluster started: {log_tail(daemon.log)}"
                    )
            state = self._sinfo()
            if state == "idle":
                return
            time.sleep(0.2)
        tails = "; ".join(f"{d.name}: {log_tail(d.log)}" for d in self.daemons)
        raise MaiUserError(
            f"the Slurm node is not idle after {timeout:.0f} s (sinfo: {state or 'no answer'}); {tails}"
        )

    def stop(self) -> None:
        """Cancel what is still queued or running (a job's slurmstepd outlives slurmd), then stop each
        daemon by its PID, slurmd first."""
        if any(d.name == "slurmctld" and d.running() for d in self.daemons):
            env = self.client_env()
            subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                queued = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
                if queued.returncode != 0 or not queued.stdout.strip():
                    break
                time.sleep(0.2)
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.daemons.clear()
        self._kill_leftovers()
        if self._munge_dir is not None:
            shutil.rmtree(self._munge_dir, ignore_errors=True)
            self._munge_dir = None

    def _kill_leftovers(self) -> None:
        """SIGKILL what this cluster started and left behind (a slurmstepd and its job's processes, if
        a job was cancelled while slurmd launched it): every process, but this one and its parents,
        whose environment names this cluster's slurm.conf, a path no other cluster uses."""
        mark = f"SLURM_CONF={self.conf}".encode()
        ours = {os.getpid(), *_ancestors(os.getpid())}
        for environ in Path("/proc").glob("[0-9]*/environ"):
            pid = int(environ.parent.name)
            with contextlib.suppress(OSError):
                if pid not in ours and mark in environ.read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        with contextlib.suppress(OSError):
            # The parent's pid follows the state, after the command name (which may hold spaces).
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            found.append(pid)
            continue
        break
    return found
