"""A generated corpus of awkward and broken image files, for every reader of user files.

Nothing is committed as a binary: each file is built in memory (Pillow, OpenCV, hand-made
PNG chunks) and written to a temporary folder at test time. Each entry says what
:func:`breakhis_core.data.images.read_image` must do with it:

- ``"ok"``: decode to a correct ``(H, W, 3)`` uint8 RGB array;
- ``"error"``: raise ``ImageDecodeError`` with a one-line message naming the file.

Reuse (the CLI, app and bench scripts)::

    sys.path.insert(0, "tests")            # pytest puts tests/ on sys.path itself
    from badfiles import make_bad_corpus
    for path, expectation in make_bad_corpus(tmp_dir):
        ...

:func:`corpus_cases` also gives the expected pixels of the "ok" files, and :data:`ODD_NAMES`
lists names that cannot exist on disk (path separators, 300 characters) for ``decode_image(data, name)``.
:func:`upload_cases` are uploads for ``breakhis_core.data.uploads``: zips with ``..`` and absolute
paths, zip bombs (declared and lying sizes), nesting, links, encryption, caps and odd names.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

OK, ERROR = "ok", "error"

ODD_NAMES = (
    "a/b/../../etc/passwd.png",
    "C:\\Users\\x\\Desktop\\slide.png",
    "é" * 150 + "_組織_🙂" * 25 + ".png",
    "x" * 300 + ".png",
    "line one\nline two\r\n\u2028.png",
    "<script>alert(1)</script>.png",
)
"""Names passed to ``decode_image(data, name)`` only: messages must stay one line and short."""


@dataclass(frozen=True)
class Case:
    """One corpus file.

    Attributes:
        name: file name on disk.
        data: file bytes.
        expectation: "ok" or "error".
        expected: for "ok", the correct ``(H, W, 3)`` uint8 RGB decoding, else None.
        tolerance: largest mean absolute difference from ``expected`` (0 = exact; lossy JPEGs more).
    """

    name: str
    data: bytes
    expectation: str
    expected: np.ndarray | None = None
    tolerance: float = 0.0


def pattern(height: int = 24, width: int = 32) -> np.ndarray:
    """A deterministic ``(height, width, 3)`` uint8 RGB gradient with no two rows or columns alike."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7 + y) % 256, (y * 11 + x * 3) % 256, (x * y + 40) % 256], axis=2).astype(np.uint8)


def quadrants(height: int = 32, width: int = 48) -> np.ndarray:
    """Flat red / green / blue / white quadrants (top-left, top-right, bottom-left, bottom-right)."""
    image = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (255, 0, 0)
    image[:h, w:] = (0, 255, 0)
    image[h:, :w] = (0, 0, 255)
    image[h:, w:] = (255, 255, 255)
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Pillow-encode ``image`` as ``fmt`` ("PNG", "JPEG", "TIFF", ...)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, idat: bytes) -> bytes:
    """An 8-bit RGB PNG with the given IHDR size and IDAT payload (which need not match the size)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_png(side: int = 30_000, rows: int = 64) -> bytes:
    """A small PNG whose header declares ``side``×``side`` RGB (2.7 GB decoded at 30,000).

    Only the first ``rows`` rows carry data (64: ~6 kB); ``rows=side`` gives a complete,
    decodable bomb (~240 kB at 9,000).
    """
    row = b"\x00" * (1 + 3 * side)
    stream = zlib.compressobj(9)
    idat = b"".join(stream.compress(row) for _ in range(rows)) + stream.flush()
    return raw_png(side, side, idat)


def bomb_jpeg(side: int = 30_000) -> bytes:
    """A small JPEG whose SOF header is patched to declare ``side``×``side``."""
    data = bytearray(encode(Image.fromarray(pattern(16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A JPEG stored sideways with EXIF Orientation=6 ("rotate 90° clockwise to view"), and its upright pixels."""
    stored = quadrants(32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    return data, np.ascontiguousarray(np.rot90(stored, k=-1))


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _composite_on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64) / 255.0
    if colour.ndim == 3:
        a = a[..., None]
    return np.rint(colour * a + 255.0 * (1.0 - a)).astype(np.uint8)


def corpus_cases() -> list[Case]:
    """Every corpus file with its expectation (and expected pixels for "ok")."""
    rgb = pattern()
    grey = rgb[..., 1]
    cases: list[Case] = []

    # --- broken or not images at all
    good_png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "PNG")
    good_jpeg = encode(Image.fromarray(pattern(64, 64)), "JPEG", quality=90)
    cases += [
        Case("zero_bytes.png", b"", ERROR),
        Case("truncated.png", good_png[: len(good_png) // 2], ERROR),
        Case("truncated_header.png", good_png[:20], ERROR),
        Case("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], ERROR),
        Case("text.png", b"benign,malignant\nthis is a CSV file, not an image\n", ERROR),
        Case("page.png", b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>\n", ERROR),
        Case("postscript.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", ERROR),
        Case("garbage_idat.png", raw_png(8, 8, b"\x13\x37" * 40), ERROR),
        Case("zero_size.png", raw_png(0, 0, zlib.compress(b"")), ERROR),
        Case("bomb.png", bomb_png(), ERROR),
        Case("large_100mp.png", bomb_png(10_000), ERROR),  # under Pillow's own 179 MP refusal, over MAX_PIXELS
        Case("bomb.jpg", bomb_jpeg(), ERROR),
    ]

    # --- unusual but valid encodings
    low_byte = np.random.default_rng(1).integers(0, 256, rgb.shape, np.uint16)
    grey16 = grey.astype(np.uint16) * 256 + low_byte[..., 0]  # 16-bit → 8-bit keeps the high byte
    # Pillow cannot write 16-bit RGB; OpenCV can
    ok16, rgb16 = cv2.imencode(".png", cv2.cvtColor(rgb.astype(np.uint16) * 256 + low_byte, cv2.COLOR_RGB2BGR))
    alpha = ((np.arange(rgb.shape[1]) * 8) % 256).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    palette_rgb = np.array([[200, 30, 90], [10, 120, 250], [250, 250, 0], [0, 0, 0]], np.uint8)
    indices = (np.add.outer(np.arange(24), np.arange(32)) % 4).astype(np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette(palette_rgb.ravel().tolist())
    transparent = palette_rgb[indices].copy()
    transparent[indices == 2] = 255
    bilevel = (np.add.outer(np.arange(24), np.arange(32)) % 3 == 0)
    cmyk_blocks = np.zeros((32, 32, 4), np.uint8)
    cmyk_blocks[:16, :16] = (0, 255, 255, 0)  # red
    cmyk_blocks[:16, 16:] = (255, 0, 255, 0)  # green
    cmyk_blocks[16:, :16] = (255, 255, 0, 0)  # blue
    cmyk_blocks[16:, 16:] = (0, 0, 0, 0)  # white
    rotated, upright = exif_rotated_jpeg()
    floats = rgb[..., 0].astype(np.float32) / 255.0
    assert ok16
    cases += [
        Case("grey16.png", encode(Image.fromarray(grey16), "PNG"), OK, _grey3(grey)),
        Case("grey16.tif", encode(Image.fromarray(grey16), "TIFF"), OK, _grey3(grey)),
        Case("rgb16.png", rgb16.tobytes(), OK, rgb),
        Case("rgba.png", encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), OK,
             _composite_on_white(rgb, alpha), 1.0),
        Case("grey_alpha.png", encode(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"), OK,
             _grey3(_composite_on_white(grey, alpha)), 1.0),
        Case("palette.png", encode(palette, "PNG"), OK, palette_rgb[indices]),
        Case("palette_transparency.png", encode(palette, "PNG", transparency=2), OK, transparent),
        Case("grey.png", encode(Image.fromarray(grey), "PNG"), OK, _grey3(grey)),
        Case("bilevel.png", encode(Image.fromarray(bilevel), "PNG"), OK, _grey3(bilevel.astype(np.uint8) * 255)),
        Case("float.tif", encode(Image.fromarray(floats, "F"), "TIFF"), OK, _grey3(rgb[..., 0]), 1.0),
        Case("cmyk.jpg", encode(Image.fromarray(cmyk_blocks, "CMYK"), "JPEG", quality=95), OK,
             quadrants(32, 32), 4.0),
        Case("exif_rotated.jpg", rotated, OK, upright, 6.0),
        Case("corrupt_exif.jpg", encode(Image.fromarray(quadrants()), "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*junk"),
             OK, quadrants(), 6.0),
        Case("bmp.bmp", encode(Image.fromarray(rgb), "BMP"), OK, rgb),
    ]

    # --- odd names: the name must come out on one short line
    cases += [
        Case("benign_組織_é_🙂.png", encode(Image.fromarray(rgb), "PNG"), OK, rgb),
        Case("broken_組織_é_🙂.png", b"not an image", ERROR),
        Case("line\nbreak\ttab.png", b"not an image", ERROR),
        Case("back\\slash\\name.png", b"not an image", ERROR),
        Case("<img src=x onerror=alert(1)>.png", b"not an image", ERROR),
        Case("long_" + "n" * 240 + ".png", b"not an image", ERROR),  # 249 bytes: near the 255-byte limit
    ]
    return cases


def make_bad_corpus(directory: str | Path) -> list[tuple[Path, str]]:
    """Write the corpus into ``directory`` (created if needed).

    Returns:
        ``[(path, expectation)]`` with expectation "ok" or "error", in a fixed order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for case in corpus_cases():
        path = directory / case.name
        path.write_bytes(case.data)
        entries.append((path, case.expectation))
    return entries


# ----------------------------------------------------------------------------- uploads (zips and caps)


@dataclass(frozen=True)
class UploadCase:
    """One uploaded file for ``breakhis_core.data.uploads.read_uploads`` and what must come of it.

    Attributes:
        name: the uploaded file's name.
        data: its bytes.
        images: how many image members must be taken (each then decodes or fails on one line).
        skipped: how many entries must be refused with a reason.
        reason: a phrase every refusal reason holds ("" for any).
        limits: keyword arguments of ``breakhis_core.data.uploads.Budget`` (e.g. a small byte budget).
        max_upload_bytes: the upload cap to apply (None: the default).
    """

    name: str
    data: bytes
    images: int
    skipped: int
    reason: str = ""
    limits: dict | None = None
    max_upload_bytes: int | None = None


def make_zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive in memory holding ``members`` (name, bytes) exactly as named (``..`` and ``/`` kept)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return buffer.getvalue()


def patch_central_directory(data: bytes, index: int = 0, *, file_size: int | None = None, flag_bits: int | None = None,
                            external_attr: int | None = None) -> bytes:
    """Rewrite fields of the ``index``-th central-directory entry (what ``zipfile`` believes about a member)."""
    data = bytearray(data)
    position = -1
    for _ in range(index + 1):
        position = data.index(b"PK\x01\x02", position + 1)
    if flag_bits is not None:
        data[position + 8 : position + 10] = struct.pack("<H", flag_bits)
    if file_size is not None:
        data[position + 24 : position + 28] = struct.pack("<I", file_size)
    if external_attr is not None:
        data[position + 38 : position + 42] = struct.pack("<I", external_attr)
    return bytes(data)


def upload_cases() -> list[UploadCase]:
    """Hostile and awkward uploads: path traversal, zip bombs, caps, nesting, links, odd names."""
    png = encode(Image.fromarray(pattern()), "PNG")
    zeros = b"\0" * 2**20
    corpus = corpus_cases()
    corpus_zip = make_zip([(f"corpus/{c.name}", c.data) for c in corpus])
    valid_zip = make_zip([("slides/SOB_B_A-14-22549AB-40-001.png", png), ("slides/b.png", png)])
    return [
        UploadCase("plain.png", png, images=1, skipped=0),
        UploadCase("corpus.zip", corpus_zip, images=len(corpus), skipped=0),
        UploadCase("traversal.zip", make_zip([("../../etc/evil.png", png), ("/abs/evil.png", png), ("C:\\evil.png", png),
                                              ("a/../../evil.png", png), ("ok/good.png", png)]),
                   images=1, skipped=4, reason="unsafe path"),
        # declares 4 GiB for a 1 MiB member: refused from the central directory, nothing inflated
        UploadCase("bomb_declared.zip", patch_central_directory(make_zip([("bomb.png", zeros)]), file_size=0xFFFF_FFF0),
                   images=0, skipped=1, reason="too large to unpack"),
        # declares 100 bytes, inflates to 1 MiB: reading stops at the declared size and the CRC fails
        UploadCase("bomb_lying.zip", patch_central_directory(make_zip([("bomb.png", zeros)]), file_size=100),
                   images=0, skipped=1, reason="unreadable member"),
        # 8 honest 1 MiB members, 3 MiB budget for the request: 3 read, 5 refused
        UploadCase("budget.zip", make_zip([(f"m{i}.png", zeros) for i in range(8)]), images=3, skipped=5,
                   reason="too large to unpack", limits={"remaining": 3 * 2**20}),
        UploadCase("many_entries.zip", make_zip([(f"e{i}.txt", b"") for i in range(40)], zipfile.ZIP_STORED),
                   images=0, skipped=1, reason="entries", limits={"entries_per_zip": 32}),
        UploadCase("many_images.zip", make_zip([(f"i{i}.png", png) for i in range(6)]), images=4, skipped=2,
                   reason="images in one zip", limits={"members_per_zip": 4}),
        UploadCase("nested.zip", make_zip([("inner.zip", valid_zip), ("x.png", png)]), images=1, skipped=1, reason="zip inside"),
        UploadCase("symlink.zip", patch_central_directory(make_zip([("link.png", b"/etc/passwd"), ("x.png", png)], zipfile.ZIP_STORED),
                                                          external_attr=0o120777 << 16),
                   images=1, skipped=1, reason="symbolic link"),
        UploadCase("encrypted.zip", patch_central_directory(make_zip([("secret.png", png)]), flag_bits=0x1),
                   images=0, skipped=1, reason="encrypted"),
        UploadCase("not_a_zip.zip", b"<html>this is not a zip</html>", images=0, skipped=1, reason="not a readable zip"),
        UploadCase("truncated.zip", valid_zip[: len(valid_zip) // 2], images=0, skipped=1, reason="not a readable zip"),
        UploadCase("mixed.zip", make_zip([("notes.txt", b"hello"), (".hidden.png", png), ("__MACOSX/._x.png", b"meta"),
                                          ("dir/", b""), ("y.png", png)]),
                   images=1, skipped=1, reason="not an image file"),
        UploadCase("names.zip", make_zip([("組織/é_🙂.png", png), ("a\\b\\c.png", png), ("n" * 300 + ".png", png),
                                          ("line\nbreak.png", b"not an image")]), images=4, skipped=0),
        UploadCase("above_cap.png", png + b"\0" * 2048, images=0, skipped=1, reason="upload limit",
                   max_upload_bytes=len(png) + 1024),
        UploadCase("above_cap.zip", valid_zip + b"\0" * 2048, images=0, skipped=1, reason="upload limit",
                   max_upload_bytes=len(valid_zip) + 1024),
        UploadCase("x" * 300 + "/../" + "é" * 100 + ".png", b"not an image", images=1, skipped=0),
    ]
