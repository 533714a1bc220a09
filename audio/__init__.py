"""Audio to the original tool's spectrogram (orcaal 2020 `preprocess/util.py`), bit for bit.

`audio.decode` turns a file (mp3, AAC in MPEG-TS, wav, flac, ...) into samples with FFmpeg's libraries
(PyAV; the fixed-point mp3 decoder for mp3), `audio.spectrogram` turns samples into the 607 x 617 RGBA
picture and writes the PNG. No Flask, no storage, nothing from `service/`. docs/audio.md is the
specification.
"""

from audio.decode import AudioError, Decoded, decode

__all__ = ["AudioError", "Decoded", "decode"]
