"""A minimal ctypes wrapper around the eSpeak NG library shipped in the `espeakng-loader` wheel.

eSpeak keeps its state (voice, parameters, the synth callback) in the process. Each Python process
that speaks gets one small helper process (started on first use) in which eSpeak is initialised
once; callers that want parallel synthesis use several processes, each with its own helper.

Determinism: eSpeak carries hidden state from one utterance to the next (the pitch-flutter phase,
the automatic gain, the roughness cycle counter, Klatt filter memories, ...), so the same call gives
different samples depending on what the process said before. The helper therefore speaks every
utterance in a child forked from its freshly initialised engine: each utterance starts from the same
state, whatever the process did before. A few variants are not deterministic even then (their
output differs between processes): see NONDETERMINISTIC_VARIANTS.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import pickle
import re
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path

import espeakng_loader
import numpy as np

from study.config.synthetic import ENGLISH_ACCENTS, NONDETERMINISTIC_VARIANTS  # noqa: F401 (re-exported)

# Constants from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_AUTO = 0
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_EE_OK = 0
_BUFFER_MS = 500  # length of the sound buffer handed to the callback per call

# int callback(short *wav, int numsamples, espeak_EVENT *events); the events are not read, so void*.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def data_path() -> Path:
    return Path(espeakng_loader.get_data_path())


def _variant_dir() -> Path:
    return data_path() / "voices" / "!v"


@lru_cache(maxsize=1)
def variant_names() -> list[str]:
    """Voice variants (the part after '+' in a voice name) that this eSpeak data folder provides."""
    folder = _variant_dir()
    if not folder.is_dir():
        raise RuntimeError(f"eSpeak variant folder not found: {folder}")
    return sorted(p.name for p in folder.iterdir() if p.is_file())


@lru_cache(maxsize=1)
def _language_voices() -> dict[str, Path]:
    """Lower-cased file name -> file for every voice under lang/ (e.g. 'en-us' -> lang/gmw/en-US).

    eSpeak matches voice identifiers case-insensitively against these file names.
    """
    return {p.name.lower(): p for p in (data_path() / "lang").rglob("*") if p.is_file()}


def _variant_hint(variants: list[str]) -> str:
    """A few valid names, the standard male/female/Klatt variants first."""
    standard = [n for n in variants if re.fullmatch(r"[mf]\d|klatt\d?", n)]
    return ", ".join((standard + [n for n in variants if n not in standard])[:16])


def validate_variant(variant: str) -> None:
    """Raise ValueError unless `variant` is a file in voices/!v.

    eSpeak silently falls back to the base voice on an unknown variant, so a typo would otherwise
    quietly collapse several "speakers" into one.
    """
    variants = variant_names()
    if variant not in variants:
        raise ValueError(
            f"unknown eSpeak voice variant {variant!r}: no such file in {_variant_dir()} "
            f"(valid names include {_variant_hint(variants)}, ...)"
        )


def validate_accent(accent: str) -> None:
    """Raise ValueError unless `accent` is one of ENGLISH_ACCENTS and has a voice file under lang/."""
    if accent not in ENGLISH_ACCENTS:
        raise ValueError(
            f"unknown English accent {accent!r}: must be one of {', '.join(ENGLISH_ACCENTS)} "
            f"(voice files searched under {data_path() / 'lang'})"
        )
    if accent.lower() not in _language_voices():
        english = sorted(n for n in _language_voices() if n.startswith("en"))
        raise ValueError(
            f"English accent {accent!r} has no voice file under {data_path() / 'lang'} "
            f"(this eSpeak data provides {', '.join(english)})"
        )


def validate_voice(accent: str, variant: str) -> None:
    """Raise ValueError naming the bad name unless f"{accent}+{variant}" is a real English voice."""
    validate_variant(variant)
    validate_accent(accent)


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    _declare(lib)
    return lib


def version() -> str:
    """eSpeak NG library version, e.g. '1.52.0' (needs no initialisation)."""
    return _library().espeak_Info(None).decode()


class _Engine:
    """The initialised eSpeak instance of the helper process. It never synthesises in that process
    itself (only in forked children), so its state stays the freshly initialised one."""

    def __init__(self) -> None:
        self.lib = _library()
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, espeakng_loader.get_data_path().encode(), 0
        )
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data {data_path()}")
        self.sample_rate: int = rate
        self._chunks: list[np.ndarray] = []
        # Keep the CFUNCTYPE object alive: eSpeak holds only the raw pointer.
        self._callback = _SynthCallback(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()  # one fork at a time: the child must see a quiet engine

    def _on_audio(self, wav: ctypes._Pointer, numsamples: int, events: int) -> int:
        if wav and numsamples > 0:
            # Copy: eSpeak reuses the buffer after the callback returns.
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def _synthesize_here(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
        """Synthesise in this process (only ever called in a forked child)."""
        self._check(self.lib.espeak_SetVoiceByName(voice.encode()), "espeak_SetVoiceByName", voice)
        # Parameters after the voice: loading a voice may reset them.
        self._check(self.lib.espeak_SetParameter(_ESPEAK_RATE, int(rate_wpm), 0), "espeak_SetParameter(rate)", voice)
        self._check(self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0), "espeak_SetParameter(pitch)", voice)
        data = text.encode("utf-8")
        buf = ctypes.create_string_buffer(data)  # NUL-terminated, len(data) + 1 bytes
        self._chunks = []
        code = self.lib.espeak_Synth(buf, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_AUTO, None, None)
        self._check(code, "espeak_Synth", voice)
        self._check(self.lib.espeak_Synchronize(), "espeak_Synchronize", voice)
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)

    def synthesize(self, text: str, accent: str, variant: str, rate_wpm: int, pitch: int) -> np.ndarray:
        voice = f"{accent}+{variant}"
        with self.lock:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: speak, send b"O"+int16 bytes or b"E"+message, never return
                status = 1
                try:
                    os.close(read_fd)
                    try:
                        payload = b"O" + self._synthesize_here(text, voice, rate_wpm, pitch).tobytes()
                    except BaseException as exc:  # report anything to the parent
                        payload = b"E" + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
                    with os.fdopen(write_fd, "wb") as pipe:
                        pipe.write(payload)
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_fd)
            try:
                with os.fdopen(read_fd, "rb") as pipe:
                    payload = pipe.read()
            finally:
                _, wait_status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(wait_status) != 0 or not payload:
            raise RuntimeError(
                f"eSpeak synthesis child for voice {voice!r} died "
                f"(exit {os.waitstatus_to_exitcode(wait_status)}) on text {text!r}"
            )
        if payload[:1] == b"E":
            raise RuntimeError(payload[1:].decode("utf-8", "replace"))
        return np.frombuffer(payload, dtype=np.int16, offset=1).copy()

    @staticmethod
    def _check(code: int, call: str, voice: str) -> None:
        if code != _EE_OK:
            raise RuntimeError(f"{call} failed with code {code} for voice {voice!r}")


def _serve() -> None:
    """Main loop of the helper process: initialise eSpeak once, then answer requests from stdin.

    Protocol (pickles): the helper first sends ("ready", sample_rate); then for each request
    (text, accent, variant, rate_wpm, pitch) it answers ("ok", int16 bytes) or ("error", message).
    """
    # Keep the protocol on a private copy of stdout and send fd 1 to stderr, so that anything the
    # C library prints cannot corrupt the stream.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    try:
        engine = _Engine()
        pickle.dump(("ready", engine.sample_rate), out)
    except Exception as exc:
        pickle.dump(("error", f"{type(exc).__name__}: {exc}"), out)
        out.flush()
        return
    out.flush()
    while True:
        try:
            text, accent, variant, rate_wpm, pitch = pickle.load(inp)
        except EOFError:  # the client closed the pipe (or exited): done
            return
        try:
            reply = ("ok", engine.synthesize(text, accent, variant, rate_wpm, pitch).tobytes())
        except Exception as exc:
            reply = ("error", str(exc))
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


class _Client:
    """Talks to this process's eSpeak helper process.

    Why a helper: each utterance is spoken in a child forked from a pristine engine, and fork() costs
    time in proportion to the forking process's memory (about 20 ms from a process that imported
    torch, under 1 ms from the small helper, which imports only numpy and ctypes).
    """

    def __init__(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding `study`
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from study.data.espeak import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        status, value = self._receive("starting the helper")
        if status != "ready":
            self.close()
            raise RuntimeError(f"eSpeak helper failed to start: {value}")
        self.sample_rate: int = value

    def _receive(self, what: str) -> tuple[str, object]:
        try:
            return pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError) as exc:
            code = self.proc.poll()
            raise RuntimeError(f"eSpeak helper process died while {what} (exit code {code})") from exc

    def synthesize(self, text: str, accent: str, variant: str, rate_wpm: int, pitch: int) -> np.ndarray:
        with self.lock:
            try:
                pickle.dump((text, accent, variant, int(rate_wpm), int(pitch)), self.proc.stdin)
                self.proc.stdin.flush()
            except BrokenPipeError as exc:
                raise RuntimeError(f"eSpeak helper process is gone (exit code {self.proc.poll()})") from exc
            status, value = self._receive(f"speaking {text!r} with voice {accent}+{variant}")
        if status != "ok":
            raise RuntimeError(str(value))
        return np.frombuffer(value, dtype=np.int16).copy()

    def close(self) -> None:
        if self.pid != os.getpid():
            return  # a forked copy: the helper belongs to the parent
        try:
            self.proc.stdin.close()  # EOF ends the helper's loop
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


_CLIENT: _Client | None = None
_CLIENT_LOCK = threading.Lock()


def _client() -> _Client:
    global _CLIENT
    with _CLIENT_LOCK:
        # A process forked after starting the helper must not share its pipes: start its own.
        if _CLIENT is None or _CLIENT.pid != os.getpid():
            _CLIENT = _Client()
            atexit.register(_CLIENT.close)
        return _CLIENT


def initialize() -> int:
    """Start this process's eSpeak helper (idempotent; eSpeak is initialised there once) and
    return eSpeak's sample rate (22050 Hz)."""
    return _client().sample_rate


def sample_rate() -> int:
    return initialize()


def synthesize(text: str, accent: str, variant: str, rate_wpm: int, pitch: int) -> np.ndarray:
    """Speak `text` with voice f"{accent}+{variant}"; returns int16 samples (samples,) at
    `sample_rate()` Hz. rate_wpm: words per minute (80..450); pitch: 0..100 (50 = the voice's own).

    Deterministic: the result depends only on the arguments (see the module docstring), except for
    the variants in NONDETERMINISTIC_VARIANTS. Validate names first with `validate_voice`: eSpeak
    itself silently substitutes the base voice for an unknown variant.
    """
    return _client().synthesize(text, accent, variant, rate_wpm, pitch)
