"""``predict``: the model's API (bckd_pipeline/predict: a Segmenter or a Detector, by the artifact's task) over an
image, a folder or a video, with a progress bar and the files of predict/outputs.py; the last line names the
output folder.

An input that cannot be read (truncated, not an image, over ``--max-pixels``) is, with ``--on-error skip``
(the default), skipped with a warning on stderr and listed in predictions.json, the rest are predicted, and
the command exits ``EXIT_SKIPPED``; with ``--on-error stop`` the first one ends it with exit 2 after
predictions.json lists what was done.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from pathlib import Path

from ..errors import DataError
from .parser import DATA_KIND_NAMES

EXIT_SKIPPED = 4  # predicted, but some inputs could not be read and were skipped

# Where a dataset kind keeps the images of a split, relative to its root (data/layouts.py), for the
# command that run/deploy print last; a layout not listed here gets the IMAGES placeholder.
SPLIT_IMAGE_FOLDERS = ("{split}", "images/{split}", "leftImg8bit/{split}", "img_dir/{split}", "images/{split}2017")


def predict(args, console) -> int:
    from ..predict.outputs import PREDICTIONS_FILE, PredictionsWriter, prepare_out
    from ..predict.loading import load
    from ..predict.sources import open_source
    from ..model_spec import read_classes_file

    source = open_source(args.source, exclude=Path(args.out))  # a bad source fails before the model loads
    seg = load(
        args.model,
        target=args.target,
        letterbox=args.letterbox,
        batch=args.batch,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        classes=args.classes or read_classes_file(args.classes_file),
        threads=args.threads,
        score_threshold=args.score_threshold,
    )
    with seg:
        out = prepare_out(args.out, seg.task.output_folders)
        writer = PredictionsWriter(out, seg, source, overlay=args.save_overlay)
        bar = _Progress(source.count, enabled=not args.no_progress, console=console)
        start = time.perf_counter()
        stopped = None
        try:
            for batch in source.batches(seg.batch, max_pixels=args.max_pixels):
                good, stopped = _sort_out(batch, writer, console, stop=args.on_error == "stop")
                for (item, decoded), found in zip(good, seg.predict([d.rgb for _, d in good]), strict=True):
                    writer.add(item, decoded, found)
                bar.advance(len(batch), time.perf_counter() - start)
                if stopped is not None:
                    item, error = stopped
                    raise DataError(
                        f"{error} predict stopped there (--on-error stop): {len(writer.entries)} image(s) before it "
                        f"were predicted and are listed in {out / PREDICTIONS_FILE}. Pass --on-error skip to skip "
                        "files that cannot be read and predict the rest."
                    )
        except BaseException:
            with contextlib.suppress(OSError):  # the error that ended it is the one to report
                writer.finish(time.perf_counter() - start, complete=False, stopped_at=stopped and stopped[0])
            raise
        finally:
            bar.close()
        path, summary = writer.finish(time.perf_counter() - start)
        info = seg.info
    size = "own size" if info.input_size is None else f"{info.input_size[0]}x{info.input_size[1]}"
    folders = [f for f in seg.task.output_folders if f != "overlays" or args.save_overlay]
    written = ", ".join([f"{f}/" for f in folders] + [PREDICTIONS_FILE])
    n, skipped = summary["images"], summary["skipped"]
    note = (
        f"; {skipped} skipped (not readable, listed in {PREDICTIONS_FILE}; exit code {EXIT_SKIPPED})" if skipped else ""
    )
    console.print(
        f"predicted {n} image{'s' * (n != 1)} with {Path(info.path).name} ({info.backend} {info.precision}, "
        f"input {size}{', letterboxed' if info.letterbox else ''}, batch {info.batch}) in {summary['wall_s']:.2f} s: "
        f"{summary['images_per_s']} images/s, infer {summary['infer_ms_mean'] or 0:.2f} ms/image -> {out}/ ({written})"
        f"{note}",
        highlight=False,
        markup=False,
    )
    return EXIT_SKIPPED if skipped else 0


def _sort_out(batch, writer, console, *, stop: bool):
    """The decoded items of a batch, up to the first unreadable one when ``stop`` (returned with its error);
    without ``stop`` each unreadable one is listed as skipped, with a warning."""
    good = []
    for item, got in batch:
        if not isinstance(got, DataError):
            good.append((item, got))
        elif stop:
            return good, (item, got)
        else:
            writer.skip(item, str(got))
            console.print(f"warning: skipped {str(item.path)!r}: {got}", highlight=False, markup=False)
    return good, None


class _Progress:
    """A rich progress bar with images/s (as the trainer's); silent when disabled."""

    def __init__(self, total: int | None, *, enabled: bool, console) -> None:
        self.enabled, self.done = enabled, 0
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]predict"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"),
                console=console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("predict", total=total, rate="")

    def advance(self, n: int, elapsed_s: float) -> None:
        self.done += n
        if self.enabled:
            rate = f"{self.done / elapsed_s:.1f} images/s" if elapsed_s > 0 else ""
            self.progress.update(self.task, advance=n, rate=rate)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def predict_hint(out: Path, data_spec: str | None = None, split: str = "val", *, target: str | None = None) -> str:
    """The `bckd-pipeline predict` command for a finished run, on its evaluation images when they are on disk."""
    images = "IMAGES"
    kind, _, root = (data_spec or "").partition(":")
    if kind in DATA_KIND_NAMES and root:
        for pattern in SPLIT_IMAGE_FOLDERS:
            folder = Path(root) / pattern.format(split=split)
            if folder.is_dir():
                images = str(folder)
                break
    command = (
        f"bckd-pipeline predict {shlex.quote(images)} --model {shlex.quote(str(out))} "
        f"--out {shlex.quote(str(Path(out) / 'predict'))} --save-overlay"
        + (f" --target {shlex.quote(target)}" if target else "")
    )
    return command + ("  (IMAGES: an image, a folder of images, or a video)" if images == "IMAGES" else "")
