"""Teacher synthesizers: the programs that read sentences aloud to make the synthetic demo dataset.

flite (Debian ``flite``) is preferred: pocketsphinx recognises its voices, so a model trained on them
can be scored by WER. espeak-ng (PyPI ``espeakng-loader``, no system install) always works, but its
formant speech is not recognised by pocketsphinx, so WER cannot judge models trained on it."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mai_models.errors import MaiUserError
from mai_models.tts.audio import read_audio, to_mono, write_wav

log = logging.getLogger(__name__)

ESPEAK_WER_WARNING = (
    "using espeak-ng as the speech teacher: ASR-based evaluation (pocketsphinx WER) cannot judge "
    "espeak-trained models, because pocketsphinx does not recognise formant speech (WER ~0.8 even on "
    "espeak's own audio); install flite (apt-get install flite) and use teacher=flite for a demo "
    "dataset whose models WER can score"
)


class TeacherError(RuntimeError):
    """The synthesizer itself failed on a sentence (not a configuration problem)."""


class Teacher(ABC):
    """A text-to-speech program used as the source of synthetic training audio."""

    name: ClassVar[str]
    license: ClassVar[str]

    def __init__(self, voice: str) -> None:
        self.voice = voice

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @abstractmethod
    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """Mono float32 audio in [-1, 1] and its sample rate."""

    def synthesize_to(
        self, texts: Sequence[str], out_dir: Path, workers: int = 2, names: Sequence[str] | None = None
    ) -> list[Path]:
        """Write ``out_dir/<name>.wav`` (PCM16) for each text, ``workers`` at a time; names default to
        ``00000``, ``00001``, ... Returns the paths in the order of ``texts``."""
        names = list(names) if names is not None else [f"{i:05d}" for i in range(len(texts))]
        if len(names) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(names)} names")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{name}.wav" for name in names]
        self._synthesize_files(list(zip(texts, paths, strict=True)), max(1, workers))
        return paths

    def _synthesize_files(self, jobs: list[tuple[str, Path]], workers: int) -> None:
        for text, path in jobs:
            wave, sr = self.synthesize(text)
            write_wav(path, wave, sr)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "voice": self.voice,
            "sample_rate": self.sample_rate,
            "license": self.license,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(voice={self.voice!r})"


class FliteTeacher(Teacher):
    """CMU flite through its command line: one short-lived process per sentence, so threads give
    real parallelism and a crash on one sentence cannot take the pipeline down."""

    name = "flite"
    license = "BSD-style (CMU Flite license)"

    def __init__(self, voice: str = "slt", program: str = "flite") -> None:
        super().__init__(voice)
        found = shutil.which(program)
        if found is None:
            raise MaiUserError(
                f"teacher 'flite' requested but '{program}' is not on PATH: "
                "apt-get install flite (or use teacher=espeak)"
            )
        self.program = found
        voices = self.voices()
        # flite silently falls back to its 8 kHz default voice for an unknown name, so check first.
        if voice not in voices and not Path(voice).is_file():
            raise MaiUserError(f"flite has no voice '{voice}' (available: {', '.join(voices)})")

    def voices(self) -> list[str]:
        out = subprocess.run([self.program, "-lv"], capture_output=True, text=True, check=False).stdout
        return out.split(":", 1)[1].split() if ":" in out else out.split()

    @cached_property
    def version(self) -> str:
        res = subprocess.run([self.program, "--version"], capture_output=True, text=True, check=False)
        text = res.stdout + res.stderr
        match = re.search(r"version:\s*(\S+)", text)
        return match.group(1) if match else (text.strip().splitlines() or ["unknown"])[0]

    @cached_property
    def sample_rate(self) -> int:
        # flite voices differ (kal 8 kHz, slt/kal16/awb/rms 16 kHz) and flite cannot report it.
        return self.synthesize("Hello.")[1]

    def _run(self, text: str, path: Path) -> None:
        # flite matches every argument against its option names, even after "-t"; a leading space
        # keeps a sentence such as "-o is the flag." from being taken for one.
        cmd = [
            self.program,
            "-voice",
            self.voice,
            "-o",
            str(path),
            "-t",
            " " + text if text.startswith("-") else text,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
            detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit {res.returncode}"]
            raise TeacherError(f"flite failed on {text[:60]!r}: {detail[0]}")

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="mai-flite-") as tmp:
            path = Path(tmp) / "out.wav"
            self._run(text, path)
            wave, sr, _ = read_audio(path)
        return to_mono(wave), sr

    def _synthesize_files(self, jobs: list[tuple[str, Path]], workers: int) -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first failure instead of leaving it inside a future.
            list(pool.map(lambda job: self._run(*job), jobs))


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakSession:
    """libespeak-ng loaded fresh for one sentence, then unloaded.

    The library keeps hidden state between sentences (pitch-flutter phase, random generator), so the
    same sentence comes out a few hundred samples longer or shorter depending on what was spoken
    before. Reloading it (~2 ms) makes each clip a pure function of (text, voice, espeak-ng build):
    the demo dataset is byte-identical whatever the worker count or order. One session at a time
    per process, because the library is a single global state."""

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    POS_CHARACTER = 1
    CHARS_UTF8 = 1
    INITIALIZE_DONT_EXIT = 0x8000
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __enter__(self) -> _EspeakSession:
        import espeakng_loader

        self.chunks: list[np.ndarray] = []
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_ESPEAK_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib = lib
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(
            self.AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, self.INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            self._unload()
            raise TeacherError(
                f"espeak_Initialize failed ({self.sample_rate}) with data at {data_path.decode()}"
            )
        # Kept on self: ctypes frees the trampoline once the Python object is gone.
        self._callback = _ESPEAK_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lib.espeak_Terminate()
        self._unload()

    def _unload(self) -> None:
        import _ctypes

        close = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary
        close(self.lib._handle)

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if n > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep synthesising

    @property
    def version(self) -> str:
        return (self.lib.espeak_Info(None) or b"unknown").decode()

    def set_voice(self, voice: str) -> None:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise MaiUserError(f"espeak-ng has no voice '{voice}' (try en-us, en, en-gb)")

    def synth(self, text: str) -> np.ndarray:
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None)
        if err != 0:
            raise TeacherError(f"espeak_Synth failed ({err}) on {text[:60]!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


class EspeakTeacher(Teacher):
    """espeak-ng via the libespeak-ng that PyPI ``espeakng-loader`` ships, driven through ctypes."""

    name = "espeak-ng"
    license = "GPL-3.0-or-later (espeak-ng)"

    def __init__(self, voice: str = "en-us") -> None:
        super().__init__(voice)
        with _EspeakSession.lock, _EspeakSession() as session:
            session.set_voice(voice)  # fail now, with a clear message, not mid-dataset
            self._version, self._sample_rate = session.version, session.sample_rate

    @property
    def version(self) -> str:
        return self._version

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        with _EspeakSession.lock, _EspeakSession() as session:
            session.set_voice(self.voice)
            samples = session.synth(text)
        return samples.astype(np.float32) / 32768.0, self.sample_rate

    def _synthesize_files(self, jobs: list[tuple[str, Path]], workers: int) -> None:
        if workers == 1 or len(jobs) < 4 * workers:
            super()._synthesize_files(jobs, 1)
            return
        # libespeak-ng is one global state per process, so parallel means processes. Plain
        # interpreters, not multiprocessing: spawn re-imports the caller's __main__ (breaks scripts
        # without a main guard) and fork copies whatever locks the parent's threads hold.
        package_root = str(Path(__file__).resolve().parents[2])
        python_path = [package_root, os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in python_path if p)}
        failures: list[str] = []
        with tempfile.TemporaryDirectory(prefix="mai-espeak-") as tmp:
            procs = []
            for i in range(workers):
                spec = Path(tmp) / f"jobs-{i}.json"
                chunk = [[text, str(path)] for text, path in jobs[i::workers]]
                spec.write_text(json.dumps({"voice": self.voice, "jobs": chunk}))
                cmd = [sys.executable, "-m", "mai_models.tts.teacher", "espeak-worker", str(spec)]
                procs.append(
                    subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                )
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    lines = err.decode(errors="replace").strip().splitlines()
                    failures.append(lines[-1] if lines else f"exit {proc.returncode}")
        if failures:
            raise TeacherError(f"espeak-ng worker failed: {failures[0]}")


def pick_teacher(name: str = "auto", flite_voice: str = "slt", espeak_voice: str = "en-us") -> Teacher:
    """``auto``: flite when the ``flite`` program is installed, else espeak-ng with a visible warning."""
    if name == "flite" or (name == "auto" and shutil.which("flite")):
        return FliteTeacher(flite_voice)
    if name not in ("auto", "espeak"):
        raise MaiUserError(f"unknown teacher '{name}' (choose auto, flite or espeak)")
    reason = "flite is not installed; " if name == "auto" else ""
    message = reason + ESPEAK_WER_WARNING
    warnings.warn(message, UserWarning, stacklevel=2)
    log.warning(message)
    return EspeakTeacher(espeak_voice)


def _espeak_worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    teacher = EspeakTeacher(spec["voice"])
    Teacher._synthesize_files(teacher, [(text, Path(path)) for text, path in spec["jobs"]], 1)


if __name__ == "__main__" and sys.argv[1:2] == ["espeak-worker"]:
    _espeak_worker_main(sys.argv[2])
