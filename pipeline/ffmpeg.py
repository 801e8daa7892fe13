"""Locate the ffmpeg executable: a system ffmpeg on PATH, else the binary bundled by imageio-ffmpeg."""

import functools
import shutil


@functools.cache
def ffmpeg_executable() -> str:
    """Path of the ffmpeg binary used for decoding and encoding."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())
