"""The feature cache: log-mel features of one split, sharded and memory-mapped.

Layout of `<cache>/features/<key>/` (key: the manifest and the feature settings):
    shard-00000.f16 ...   raw float16 (frames, n_mels) rows of SHARD_UTTERANCES utterances each
    index.json            per utterance: its shard, first row and frame count; n_mels
Shards are computed in parallel processes (each decodes its utterances' audio), written under a
temporary folder that is renamed into place when complete, so a crash never leaves a partial cache
and workers that build the same cache at once agree. Readers map the shards read-only into memory
(copy-on-write, so tensors can wrap them): every worker of a sweep shares one copy in the page cache
instead of holding the whole split in its own memory (train-960 is about 55 GB of features).
"""
from __future__ import annotations

import itertools
import json
import multiprocessing.pool
import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio
from tqdm import tqdm

from study.config import FeatureConfig
from study.data.audio import SAMPLE_RATE, load_audio
from study.data.logmel import LogMel
from study.runtime import forkserver, progress

SHARD_UTTERANCES = 2000
# Speed perturbation's resampling gives values that depend on the thread count (a float16 step in a few
# hundred values per 200 utterances, enough to send a training run elsewhere): every shard is computed
# with this many threads, whatever the machine, the caller or the number of shards, so a cache's contents
# depend on its inputs alone. 2: the count the published caches were built with (on 2 cores).
FEATURE_THREADS = 2


class MappedFeatures(Sequence):
    """The features of a split: item i is utterance i's (frames, n_mels) float16 tensor, a view of
    the mapped shard (no copy until the data is used)."""

    def __init__(self, folder: Path):
        index = json.loads((folder / "index.json").read_text())
        self.folder, self.n_mels = folder, index["n_mels"]
        self._where = index["utterances"]  # [shard, first row, frames] per utterance
        self._shards = [np.memmap(folder / name, dtype=np.float16, mode="c").reshape(-1, self.n_mels)
                        if (folder / name).stat().st_size else np.zeros((0, self.n_mels), np.float16)
                        for name in index["shards"]]

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        shard, start, frames = self._where[i]
        return torch.from_numpy(self._shards[shard][start:start + frames])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def frames(self) -> list[int]:
        return [frames for _, _, frames in self._where]


class ChainedFeatures(Sequence):
    """Several caches read as one split (the training split's originals, then its copy at each speed
    factor, each in a cache of its own, so a new factor list reuses every cache it shares)."""

    def __init__(self, parts: list[MappedFeatures]):
        self.parts = parts
        self._where = [(k, i) for k, part in enumerate(parts) for i in range(len(part))]

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        part, j = self._where[i]
        return self.parts[part][j]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (f for part in self.parts for f in part)

    def frames(self) -> list[int]:
        return [n for part in self.parts for n in part.frames()]


AudioSource = tuple[str, "tuple[float, float] | None"]  # a file, and the (start, length) seconds read of it or None


def _extract_shard(job: tuple[list[AudioSource], float, dict, str]) -> list[int]:
    """Decodes, speed-perturbs and featurises one shard's audio into `path`; returns each utterance's frames."""
    threads = torch.get_num_threads()
    torch.set_num_threads(FEATURE_THREADS)
    try:
        return _featurise(*job)
    finally:
        torch.set_num_threads(threads)  # the caller's, when a shard is computed in its process


def _featurise(sources: list[AudioSource], speed: float, feature_cfg: dict, path: str) -> list[int]:
    logmel = LogMel(FeatureConfig(**feature_cfg))
    # read as if recorded at speed x the rate: 1/speed the duration, speed x the pitch
    resample = torchaudio.transforms.Resample(round(SAMPLE_RATE * speed), SAMPLE_RATE) if speed != 1 else None
    frames = []
    with open(path, "wb") as out, torch.inference_mode():
        for audio, segment in sources:
            wave = load_audio(audio, segment=segment)  # (samples,)
            if resample is not None:
                wave = resample(wave)
            feats = logmel(wave).to(torch.float16).numpy()  # (frames, n_mels)
            out.write(feats.tobytes())
            frames.append(feats.shape[0])
    return frames


def _remove_abandoned(folder: Path) -> None:
    """Temporary folders of this cache left by processes that died while building it."""
    for tmp in folder.parent.glob(f"{folder.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def extraction_pool(workers: int) -> multiprocessing.pool.Pool:
    # Children forked from the forkserver (study/runtime/forkserver.py): they can set their own thread
    # count, and need no import of the caller's main module.
    # The pool ends its children with SIGTERM: they must die of it, not run the handler they inherit
    # (sweep.py's raises KeyboardInterrupt, which printed a child's traceback at the end of extraction).
    return forkserver.context().Pool(workers, signal.signal, (signal.SIGTERM, signal.SIG_DFL))


def build_feature_cache(sources: list[AudioSource], feature_cfg: dict, n_mels: int, folder: Path,
                        workers: int | None = None, speed: float = 1.0) -> MappedFeatures:
    """The cache in `folder`, computed first if absent: shards in parallel processes, a progress bar.
    `sources`: each utterance's audio; `speed`: the speed-perturbation factor every file is read at."""
    if (folder / "index.json").is_file():
        return MappedFeatures(folder)
    _remove_abandoned(folder)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(sources), SHARD_UTTERANCES)) or [0]
    names = [f"shard-{k:05d}.f16" for k in range(len(starts))]
    processes = workers or max(1, len(os.sched_getaffinity(0)) // FEATURE_THREADS)  # FEATURE_THREADS threads each
    workers = max(1, min(processes, len(starts)))
    jobs = [(sources[s:s + SHARD_UTTERANCES], speed, feature_cfg, str(tmp / n)) for s, n in zip(starts, names)]
    bar = tqdm(total=len(sources), desc=f"features {folder.name}", unit="utt", disable=None, leave=False)
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_extract_shard(job))
            bar.update(len(job[0]))
            progress.beat()  # a long corpus's extraction is not a hang
    else:
        with extraction_pool(workers) as pool:
            results = []
            for frames in pool.imap(_extract_shard, jobs):
                results.append(frames)
                bar.update(len(frames))
                progress.beat()
    bar.close()
    where = [[k, start, n] for k, frames in enumerate(results)  # start: the utterance's first row in its shard
             for start, n in zip(itertools.accumulate(frames, initial=0), frames)]
    (tmp / "index.json").write_text(json.dumps({"n_mels": n_mels, "shards": names, "utterances": where}))
    try:
        tmp.rename(folder)  # atomic: readers see a complete cache or none
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return MappedFeatures(folder)
