"""Decode an audio file into mono float32 blocks at the model's sample rate.

Files are read block by block and resampled with a streaming resampler, so a one-hour
recording never sits in memory whole. soxr's stream gives exactly the samples of a
one-shot `soxr.resample` (what librosa.load uses), so block size never changes features.

Everything that makes a file unusable is raised as AudioError with a one-line reason that
says what to do; callers add the file name.

Sample values: PCM formats cannot leave [-1, 1); float formats can. A float sample beyond
MAX_ABS_SAMPLE (+24 dBFS) is no longer audio (a corrupt or mis-scaled file, or one crafted
so that its spectrum overflows to NaN): such a file is refused, never scored. Overs up to
that bound are kept as they are (ordinary float masters clip a little).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import EXIT_FAILED, DfaError

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
        ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64", ".rf64", ".wma", ".webm",
    }
)

# Seconds of source audio decoded at a time: large enough that per-block overhead is
# negligible, small enough that a 192 kHz 6-channel block stays around 50 MB.
BLOCK_SECONDS = 10.0

# libsndfile's MP3 and Vorbis frame counts come from headers and can be estimates; a file
# is called truncated only when it ends this much short of what its header declares.
_TRUNCATION_TOLERANCE = 0.02

# The largest |sample| accepted (+24 dBFS). Beyond it the file is refused: see the module
# docstring. Squared in float32 it stays far from overflow (and so do the FFT's sums).
MAX_ABS_SAMPLE = 16.0
MIN_SAMPLE_RATE = 1000


class AudioError(DfaError):
    """A file that cannot be judged. The message is one line: the reason and the remedy.
    Per file: the other files go on, and the run exits 1."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class AudioArray:
    """Audio already in memory, scored like a file: float samples of shape (frames,) or
    (frames, channels) at `rate` Hz. `name` stands for it in results."""

    samples: Any
    rate: int
    name: str = "<array>"


def blocks_of(source, sample_rate: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks at `sample_rate` of a file path or an AudioArray."""
    if isinstance(source, AudioArray):
        return array_blocks(source.samples, source.rate, sample_rate)
    return decode_blocks(source, sample_rate)


def is_audio_path(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def decode_blocks(path: str | os.PathLike, sample_rate: int,
                  block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Yield the file as mono float32 blocks at `sample_rate`.

    Channels are averaged (as librosa.to_mono does); resampling is soxr "HQ" (librosa's
    default). Raises AudioError for missing, empty, undecodable, truncated or corrupt files
    and for NaN/Inf samples, possibly after some blocks have been yielded.
    """
    path = Path(path)
    size, head = _check_file(path)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        _check_wav_header(path, size)
    elif head[:4] == b"OggS":
        _check_ogg_pages(path, size)
    source = _open_soundfile(path)
    if source is None:
        source = _open_audioread(path)
    rate, channels, declared, blocks = source
    if rate < MIN_SAMPLE_RATE or channels <= 0:
        # A corrupt header can claim 1 Hz: hours of "audio" from a few kB.
        raise AudioError(f"invalid header (sample rate {rate} Hz, {channels} channels; "
                         f"speech needs at least {MIN_SAMPLE_RATE} Hz); re-export the file")
    yield from _mono_blocks(blocks(max(1, int(rate * block_seconds))), rate, declared,
                            sample_rate)


def array_blocks(samples, rate: int, sample_rate: int,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """decode_blocks for audio already in memory: float samples of shape (frames,) or
    (frames, channels) (soundfile's layout) at `rate` Hz, checked and converted exactly as a
    file's samples are."""
    a = np.asarray(samples)
    if a.dtype.kind != "f" or a.ndim not in (1, 2) or (a.ndim == 2 and a.shape[1] < 1):
        raise AudioError(
            f"expected float samples of shape (frames,) or (frames, channels), got "
            f"{a.dtype} {list(a.shape)}; pass e.g. soundfile.read(path, dtype='float32')[0]")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < MIN_SAMPLE_RATE:
        raise AudioError(f"sample rate {rate!r}: give the rate of the samples in Hz "
                         f"(at least {MIN_SAMPLE_RATE})")
    a = a.reshape(len(a), -1)
    step = max(1, int(rate * block_seconds))
    # Copies: windows hold on to these blocks while queued for scoring, and a caller may
    # refill its array for the next clip before they are scored.
    yield from _mono_blocks((np.array(a[i: i + step]) for i in range(0, len(a), step)),
                            int(rate), 0, sample_rate)


def _mono_blocks(blocks: Iterator[np.ndarray], rate: int, declared: int,
                 sample_rate: int) -> Iterator[np.ndarray]:
    """(frames, channels) blocks at `rate` -> checked mono float32 blocks at `sample_rate`;
    `declared`: the frame count a header promised (0: unknown), for the truncation check."""
    stream = MonoStream(rate, sample_rate)
    for block in blocks:
        mono = stream.push(block)
        if mono.size:
            yield mono
    if declared and stream.read < declared * (1 - _TRUNCATION_TOLERANCE):
        raise AudioError(
            f"truncated: the header declares {declared / rate:.2f} s but only "
            f"{stream.read / rate:.2f} s decode; re-export or re-download the file"
        )
    tail = stream.end()
    if tail.size:
        yield tail


class MonoStream:
    """Checks (finite, within MAX_ABS_SAMPLE), mixes to mono and resamples blocks of
    (frames, channels) float32 samples at `rate` as they come: what files, arrays and live
    streams all go through, so the same samples give the same blocks whatever their
    chunking (soxr's stream equals its one-shot resample)."""

    def __init__(self, rate: int, sample_rate: int):
        self.rate = rate
        self.read = 0  # frames pushed so far, at `rate`
        self.resampler = None
        if rate != sample_rate:
            import soxr

            self.resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32",
                                                 quality="HQ")

    def push(self, block: np.ndarray) -> np.ndarray:
        """Mono float32 samples at the target rate for `block` (possibly none yet)."""
        rate = self.rate
        if block.size == 0:
            return np.zeros(0, dtype=np.float32)
        if not np.isfinite(block).all():
            bad = int(np.argmax(~np.isfinite(block).all(axis=1)))
            raise AudioError(
                f"NaN or infinite sample at {(self.read + bad) / rate:.2f} s; the file is "
                "corrupt, re-export it"
            )
        peak = float(np.abs(block).max())
        if peak > MAX_ABS_SAMPLE:
            bad = int(np.argmax((np.abs(block) > MAX_ABS_SAMPLE).any(axis=1)))
            raise AudioError(
                f"sample value {peak:.3g} at {(self.read + bad) / rate:.2f} s is far beyond "
                f"full scale (limit +-{MAX_ABS_SAMPLE:g}); the file is corrupt or "
                "mis-scaled: re-export it normalised to [-1, 1]"
            )
        self.read += block.shape[0]
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=False)
        return mono

    def end(self) -> np.ndarray:
        """The resampler's last samples (none without resampling)."""
        if self.resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _check_file(path: Path) -> tuple[int, bytes]:
    """(size, first 12 bytes: enough to tell WAV and Ogg), or AudioError for anything that
    is not a readable regular file."""
    try:
        st = os.stat(path)
    except ValueError as e:  # a NUL byte in the name
        raise AudioError("invalid file name (it contains a NUL byte)") from e
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise AudioError("no such file; check the path") from e
        if e.errno == errno.ENAMETOOLONG:
            raise AudioError("file name too long for this system; rename or move the "
                             "file") from e
        raise AudioError(f"cannot read ({e.strerror or e}); check the path and its "
                         "permissions") from e
    if stat.S_ISDIR(st.st_mode):
        raise AudioError("is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO, socket or device could block forever or never end.
        raise AudioError("not a regular file (pipe, socket or device); save the audio to a "
                         "file first")
    if st.st_size == 0:
        raise AudioError("empty file (0 bytes); re-export or re-download it")
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        if e.errno == errno.EACCES:
            raise AudioError("permission denied; make the file readable") from e
        raise AudioError(f"cannot read ({e.strerror or e})") from e
    return st.st_size, head


def _check_ogg_pages(path: Path, size: int) -> None:
    """Catch Ogg files (Vorbis, Opus, FLAC-in-Ogg) cut short: libsndfile decodes what is
    there and reports that shorter length as the whole file. A complete stream ends with a
    page flagged end-of-stream, and every page's segments lie inside the file. Bytes after
    the last page (an ID3v1 or APE tag, padding) are not audio and are left alone."""
    try:
        with open(path, "rb") as f:
            pos, flags = 0, 0
            while pos < size:
                f.seek(pos)
                head = f.read(27)
                if len(head) < 4 or head[:4] != b"OggS":
                    break  # trailing bytes that are not a page: the stream ended before
                if len(head) < 27:
                    raise AudioError("truncated: the last Ogg page is cut short; re-export "
                                     "or re-download the file")
                table = f.read(head[26])
                end = pos + 27 + head[26] + sum(table)
                if len(table) < head[26] or end > size:
                    raise AudioError(
                        f"truncated: the last Ogg page needs {end - size} bytes more than the "
                        "file has; re-export or re-download the file")
                flags, pos = head[5], end
            if not flags & 0x04:
                raise AudioError("truncated: the Ogg stream has no end-of-stream page; "
                                 "re-export or re-download the file")
    except OSError as e:
        raise AudioError(f"cannot read ({e.strerror or e})") from e


def _check_wav_header(path: Path, size: int) -> None:
    """Catch WAVs (RIFF/WAVE, known from the file's head) cut short: libsndfile silently
    shortens them to the bytes present."""
    try:
        with open(path, "rb") as f:
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return
                cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    available = size - pos - 8
                    # 0 and 0xFFFFFFFF mean "unknown length" (streamed WAVs): nothing to check.
                    if 0 < clen < 0xFFFFFFFF and available < clen:
                        raise AudioError(
                            f"truncated: the header declares {clen} bytes of audio but only "
                            f"{available} are present; re-export or re-download the file"
                        )
                    return
                pos += 8 + clen + (clen & 1)
    except OSError as e:
        raise AudioError(f"cannot read: {e.strerror}") from e


def _open_soundfile(path: Path):
    import soundfile as sf

    try:
        # Bytes, not str: a file name that is not valid UTF-8 still opens.
        f = sf.SoundFile(os.fsencode(path))
    except sf.LibsndfileError:
        return None  # not a format libsndfile knows: try audioread/ffmpeg
    except Exception as e:  # noqa: BLE001 - soundfile raises assorted types for bad headers
        raise AudioError(f"not decodable audio ({_one_line(e)})") from e

    def blocks(n: int) -> Iterator[np.ndarray]:
        with f:
            while True:
                try:
                    block = f.read(n, dtype="float32", always_2d=True)
                except Exception as e:  # noqa: BLE001
                    raise AudioError(
                        f"corrupt audio ({_one_line(e)}); re-export or re-download the file"
                    ) from e
                if block.shape[0] == 0:
                    return
                yield block

    declared = f.frames if f.seekable() and 0 < f.frames < 2**62 else 0
    return f.samplerate, f.channels, declared, blocks


def _open_audioread(path: Path):
    try:
        import audioread
    except ImportError as e:
        raise AudioError(
            "not decodable audio (format not recognised); convert it to wav or flac"
        ) from e
    try:
        f = audioread.audio_open(str(path))
    except Exception as e:  # noqa: BLE001 - NoBackendError, DecodeError, OSError...
        raise AudioError(
            "not decodable audio (format not recognised); convert it to wav or flac"
        ) from e

    def blocks(n: int) -> Iterator[np.ndarray]:
        with f:
            channels = f.channels
            pending: list[np.ndarray] = []
            held = 0
            try:
                for buf in f:
                    frame = np.frombuffer(buf, dtype="<i2").reshape(-1, channels)
                    pending.append(frame.astype(np.float32) / 32768.0)
                    held += frame.shape[0]
                    if held >= n:
                        yield np.concatenate(pending)
                        pending, held = [], 0
            except Exception as e:  # noqa: BLE001
                raise AudioError(
                    f"corrupt audio ({_one_line(e)}); re-export or re-download the file"
                ) from e
            if pending:
                yield np.concatenate(pending)

    return f.samplerate, f.channels, 0, blocks


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
