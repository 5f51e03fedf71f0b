"""What ``predict`` reads: one image, a folder of images (recursively), or a video, as named items.

Each item has an output stem: its path relative to the folder without the suffix (``street/a.jpg`` ->
``street/a``), so a recursive folder never writes two outputs under one name; where two inputs differ
only by suffix (``a.jpg``, ``a.png``), both keep their suffix (``a.jpg``, ``a.png``). Video frames are
``<video stem>/frame_000000``. Decoding happens batch by batch, never all at once; an image that cannot
be decoded (truncated, not an image, over the pixel limit) comes out as its ``DataError`` in place of
its pixels, so the caller decides whether to skip it or stop (``predict --on-error``).

Video needs a decoder that is not a dependency of this package: PyAV (``pip install av``, the
``[video]`` extra) or OpenCV (``pip install opencv-python-headless``), whichever is installed. The tests
cover the PyAV path; the OpenCV path (``cv2.VideoCapture``) has none (OpenCV is not a test dependency).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendMissingError, ConfigError, DataError
from ..imagefile import DEFAULT_MAX_PIXELS, Decoded, decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
VIDEO_HINT = (
    "Reading video needs PyAV or OpenCV, and neither is installed: pip install av (or pip install "
    '"bckd-pipeline[video]", or pip install opencv-python-headless). Or extract the frames first '
    "(ffmpeg -i VIDEO frames/%06d.png) and predict the folder."
)


@dataclass(frozen=True)
class Item:
    name: str  # the input as predictions.json names it: a path relative to SOURCE, or the video's name
    stem: str  # relative output path without suffix
    path: Path
    frame: int | None = None  # a video frame's index


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # image | folder | video
    items: tuple[Item, ...] = ()  # images; a video's frames are read as they come
    frames: int | None = None  # a video's frame count, when its container says

    @property
    def count(self) -> int | None:
        return self.frames if self.kind == "video" else len(self.items)

    def batches(
        self, n: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Iterator[list[tuple[Item, Decoded | DataError]]]:
        """Decoded items, ``n`` at a time; an image that cannot be decoded is its error."""
        stream = self._video() if self.kind == "video" else ((it, _decode(it, max_pixels)) for it in self.items)
        batch: list[tuple[Item, Decoded | DataError]] = []
        for pair in stream:
            batch.append(pair)
            if len(batch) == n:
                yield batch
                batch = []
        if batch:
            yield batch

    def _video(self) -> Iterator[tuple[Item, Decoded]]:
        for i, rgb in enumerate(read_video(self.path)):
            yield Item(self.path.name, f"{self.path.stem}/frame_{i:06d}", self.path, i), Decoded(rgb)


def _decode(item: Item, max_pixels: int) -> Decoded | DataError:
    try:
        return decode_image(item.path, max_pixels=max_pixels)
    except DataError as exc:
        return exc


def open_source(path: Path | str, *, exclude: Path | None = None) -> Source:
    """Check ``path`` and list what it holds; ``exclude``: a folder whose files are never inputs (the --out)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Source {str(path)!r} does not exist. Pass an image, a folder of images, or a video file.")
    if path.is_dir():
        return _folder(path, exclude)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return Source(path, "image", (Item(path.name, path.stem, path),))
    if suffix in VIDEO_SUFFIXES:
        return Source(path, "video", frames=video_frames(path))
    raise ConfigError(
        f"Source {str(path)!r} is a {suffix or 'suffix-less'} file; predict reads images "
        f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)}), folders of them, or videos "
        f"({', '.join(s[1:] for s in VIDEO_SUFFIXES)}). Convert it, or pass the folder that holds the images."
    )


def _folder(root: Path, exclude: Path | None) -> Source:
    skip = None if exclude is None else exclude.resolve()
    files = []
    others = Counter()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and skip in p.resolve().parents:
            continue  # a previous predict's outputs inside the source folder are not inputs
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(rel)
        else:
            others[p.suffix.lower() or "(no suffix)"] += 1
    if not files:
        seen = (
            f" (it holds {', '.join(f'{n} {s}' for s, n in others.most_common(4))} files)"
            if others
            else " (it is empty)"
        )
        raise DataError(
            f"Folder {str(root)!r} holds no images{seen}; predict looks recursively for "
            f"{', '.join(s[1:] for s in IMAGE_SUFFIXES)}. Pass the folder with the images, or a video file."
        )
    stems = Counter(str(rel.with_suffix("")) for rel in files)
    items = tuple(
        Item(
            rel.as_posix(),
            (rel.with_suffix("") if stems[str(rel.with_suffix(""))] == 1 else rel).as_posix(),
            root / rel,
        )
        for rel in files
    )
    return Source(root, "folder", items)


# -- video --------------------------------------------------------------------------------------------
def video_reader() -> str:
    for module in ("av", "cv2"):
        if importlib.util.find_spec(module) is not None:
            return module
    raise BackendMissingError(VIDEO_HINT)


def video_frames(path: Path) -> int | None:
    """The frame count the container declares (None when it does not); fails early without a decoder."""
    reader = video_reader()
    if reader == "av":
        import av

        with _open_av(av, path) as container:
            return container.streams.video[0].frames or None
    import cv2

    cap = _open_cv2(cv2, path)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    finally:
        cap.release()


def read_video(path: Path) -> Iterator[np.ndarray]:
    """uint8 H x W x 3 RGB frames, in order."""
    if video_reader() == "av":
        import av

        with _open_av(av, path) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        return
    import cv2

    cap = _open_cv2(cv2, path)
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[:, :, ::-1])
    finally:
        cap.release()


def _open_av(av, path: Path):
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises one error type per FFmpeg error code
        raise DataError(f"Could not open video {str(path)!r} ({type(exc).__name__}: {str(exc)[:160]}).") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{str(path)!r} holds no video stream. Pass a video file, an image, or a folder of images.")
    return container


def _open_cv2(cv2, path: Path):
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(
            f"OpenCV could not open video {str(path)!r} (unsupported codec, or not a video). Install PyAV "
            "(pip install av) or extract the frames with ffmpeg and predict the folder."
        )
    return cap
