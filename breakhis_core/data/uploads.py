"""Uploaded files, read in memory: images pass through, zip archives are unpacked with limits.

Nothing here touches the disk: the app's uploads (and the CLI's zip files) are turned into
:class:`Upload` records holding the encoded bytes, decoded later one by one by
``images.decode_image``. Every file that is not used gets a one-line reason instead
(:class:`Skipped`); the rest of the batch goes on.

Limits (defaults; each function takes its own):

- a file (image or zip) above ``MAX_UPLOAD_BYTES`` is refused (the app's upload cap);
- a zip is refused whole when its central directory declares more than ``ZIP_MAX_ENTRIES``
  entries (checked before it is parsed, so a million-entry archive costs nothing);
- at most ``ZIP_MAX_MEMBERS`` images are taken from one zip;
- all zips of one request uncompress to at most ``ZIP_MAX_TOTAL_BYTES``, and one member to at
  most ``images.MAX_FILE_BYTES``: a member is refused by its declared size before it is read,
  and by its actual size while it is read (the reader never takes more than the limit + 1 byte),
  so a zip bomb that lies about its sizes is caught as well;
- members with absolute paths, drive letters or ``..`` components, symbolic links, nested zips,
  encrypted members and non-image files are skipped with the reason; folders, hidden files and
  ``__MACOSX`` metadata are skipped silently.
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from breakhis_core.errors import ImageDecodeError
from breakhis_core.files import format_bytes, sha256
from breakhis_core.data.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, decode_image, display_name

MAX_UPLOAD_BYTES = 200 * 2**20
"""Largest uploaded file, in bytes (``server.maxUploadSize = 200`` MB in ``.streamlit/config.toml``)."""
ZIP_MAX_ENTRIES = 10_000
"""Most entries (files, folders, anything) a zip may declare; more and it is refused unread."""
ZIP_MAX_MEMBERS = 1000
"""Most images read from one zip; the rest are listed as skipped."""
ZIP_MAX_TOTAL_BYTES = 512 * 2**20
"""Most uncompressed bytes read from all zips of one request."""
ZIP_SEPARATOR = " › "
"""Between an archive's name and a member's name in labels (``archive.zip › folder/a.png``)."""


@dataclass(frozen=True)
class Upload:
    """An image file received in memory.

    Attributes:
        name: the base name the magnification and slide are read from (no folders, no ``/`` or ``\\``).
        label: what is shown for it (``archive.zip › folder/name.png`` for zip members), one short line.
        data: the encoded bytes.
    """

    name: str
    label: str
    data: bytes


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare with ==
class DecodedUpload:
    """An upload decoded: ``upload`` as received and ``image``, ``(H, W, 3)`` uint8 RGB."""

    upload: Upload
    image: np.ndarray

    @property
    def name(self) -> str:
        return self.upload.name

    @property
    def label(self) -> str:
        return self.upload.label

    @property
    def data(self) -> bytes:
        return self.upload.data

    @property
    def sha256(self) -> str:
        """``files.sha256`` of the file's bytes (the audit log's and the case store's name of the image)."""
        return sha256(self.upload.data)


class Skipped(NamedTuple):
    """A file that is not used and why (unpacks as ``(label, reason)``)."""

    label: str
    reason: str


@dataclass
class Budget:
    """Uncompressed bytes still allowed from the zips of one request."""

    remaining: int = ZIP_MAX_TOTAL_BYTES
    members_per_zip: int = ZIP_MAX_MEMBERS
    entries_per_zip: int = ZIP_MAX_ENTRIES


def read_uploads(
    files: Iterable, max_upload_bytes: int = MAX_UPLOAD_BYTES, budget: Budget | None = None
) -> tuple[list[Upload], list[Skipped]]:
    """Read uploaded files in memory; nothing is written to disk.

    Args:
        files: uploaded file objects (``.name`` and ``.getvalue()``, e.g. ``st.file_uploader`` results)
            or ``(name, bytes)`` pairs.
        max_upload_bytes: largest file accepted.
        budget: limits shared by all zips (default: a fresh :class:`Budget`).

    Returns:
        ``(uploads, skipped)``: the image files, in order (zip members in archive order), and the
        files not used with one-line reasons.
    """
    budget = budget or Budget()
    uploads: list[Upload] = []
    skipped: list[Skipped] = []
    for file in files or []:
        name, data = (file if isinstance(file, tuple) else (file.name, file.getvalue()))
        name = str(name)
        label = display_name(name)
        size = memoryview(data).nbytes
        if size > max_upload_bytes:
            skipped.append(Skipped(label, f"file too large ({format_bytes(size)}; the upload limit is "
                                          f"{format_bytes(max_upload_bytes)})"))
        elif Path(name).suffix.lower() == ".zip":
            found, refused = read_zip(data, name, budget)
            uploads += found
            skipped += refused
        else:  # a browser sends a base name; anything path-like is cut to its last part
            uploads.append(Upload(name.replace("\\", "/").rsplit("/", 1)[-1], label, bytes(data)))
    return uploads, skipped


def decode_uploads(uploads: Iterable[Upload]) -> tuple[list[DecodedUpload], list[Skipped]]:
    """Decode each upload with ``images.decode_image``; undecodable ones become :class:`Skipped`.

    Returns:
        ``(decoded, skipped)``: the decoded uploads in order, and the uploads that could not be decoded, each with
        its one-line reason (without the repeated file name).
    """
    decoded, skipped = [], []
    for upload in uploads:
        try:
            decoded.append(DecodedUpload(upload, decode_image(upload.data, upload.name)))
        except ImageDecodeError as exc:
            skipped.append(Skipped(upload.label, str(exc).removeprefix(f"{display_name(upload.name)}: ")))
    return decoded, skipped


def read_zip(data: bytes, archive: str = "archive.zip", budget: Budget | None = None) -> tuple[list[Upload], list[Skipped]]:
    """The image members of a zip archive held in memory, within ``budget`` (see the module notes).

    Returns:
        ``(uploads, skipped)``; an unreadable or oversized archive gives one skipped entry.
    """
    budget = budget or Budget()
    archive_label = display_name(archive)
    uploads: list[Upload] = []
    skipped: list[Skipped] = []
    entries = declared_entries(data)
    if entries is not None and entries > budget.entries_per_zip:
        return uploads, [Skipped(archive_label, f"zip declares {entries:,} entries (the limit is "
                                                f"{budget.entries_per_zip:,}); not opened")]
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        return uploads, [Skipped(archive_label, f"not a readable zip archive ({display_name(str(exc) or type(exc).__name__, 120)})")]
    if len(members) > budget.entries_per_zip:  # no end record found above, or it lied
        return uploads, [Skipped(archive_label, f"zip holds {len(members):,} entries (the limit is "
                                                f"{budget.entries_per_zip:,}); not opened")]
    taken = 0
    with zf:
        for info in members:
            member = info.filename
            label = f"{archive_label}{ZIP_SEPARATOR}{display_name(member, 60)}"
            parts = member.replace("\\", "/").split("/")
            base = parts[-1]
            if info.is_dir():
                continue
            if (member.startswith(("/", "\\")) or ".." in parts or (len(member) > 1 and member[1] == ":")
                    or "\0" in member):
                skipped.append(Skipped(label, "unsafe path inside the zip (absolute or '..'); not read"))
                continue
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue  # hidden and macOS metadata files are not the user's images
            if stat.S_ISLNK(info.external_attr >> 16):
                skipped.append(Skipped(label, "symbolic link inside the zip; not followed"))
                continue
            suffix = Path(base).suffix.lower()
            if suffix == ".zip":
                skipped.append(Skipped(label, "zip inside a zip; not opened"))
                continue
            if suffix not in IMAGE_SUFFIXES:
                skipped.append(Skipped(label, f"not an image file ({display_name(suffix, 20) or 'no extension'})"))
                continue
            if info.flag_bits & 0x1:
                skipped.append(Skipped(label, "encrypted; not read"))
                continue
            if taken >= budget.members_per_zip:
                skipped.append(Skipped(label, f"more than {budget.members_per_zip:,} images in one zip; not read"))
                continue
            limit = min(MAX_FILE_BYTES, budget.remaining)
            if info.file_size > limit:
                skipped.append(Skipped(label, f"too large to unpack ({format_bytes(info.file_size)} declared; "
                                              f"{format_bytes(limit)} of the unpacking limit left); not read"))
                continue
            try:
                with zf.open(info) as handle:
                    content = handle.read(limit + 1)  # never trust the declared size
            except (zipfile.BadZipFile, RuntimeError, OSError, NotImplementedError, EOFError, ValueError,
                    struct.error) as exc:
                reason = display_name(str(exc) or type(exc).__name__, 120)
                skipped.append(Skipped(label, f"unreadable member ({reason}); not read"))
                continue
            if len(content) > limit:
                skipped.append(Skipped(label, f"uncompresses to more than the unpacking limit "
                                              f"({format_bytes(limit)}); not read"))
                continue
            budget.remaining -= len(content)
            taken += 1
            uploads.append(Upload(base, label, content))
    return uploads, skipped


def read_zip_file(path: str | Path, budget: Budget | None = None, max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[list[Upload], list[Skipped]]:
    """:func:`read_zip` of a zip file on disk (the CLI), refusing files over ``max_bytes``."""
    path = Path(path)
    label = display_name(path.name)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return [], [Skipped(label, f"file too large ({format_bytes(size)}; the limit is {format_bytes(max_bytes)})")]
        data = path.read_bytes()
    except OSError as exc:
        return [], [Skipped(label, f"cannot read file ({exc.strerror or exc})")]
    return read_zip(data, path.name, budget)


def declared_entries(data: bytes) -> int | None:
    """Entries the zip's end-of-central-directory record declares (zip64 aware), or None when there is none."""
    view = memoryview(data)
    tail = bytes(view[max(0, len(view) - (22 + 65_535)) :])
    position = tail.rfind(b"PK\x05\x06")
    if position < 0 or position + 22 > len(tail):
        return None
    entries = struct.unpack_from("<H", tail, position + 10)[0]
    if entries != 0xFFFF:
        return entries
    locator = position - 20  # zip64 end-of-central-directory locator, then the zip64 record it points to
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        offset = struct.unpack_from("<Q", tail, locator + 8)[0]
        if offset + 56 <= len(view) and bytes(view[offset : offset + 4]) == b"PK\x06\x06":
            return struct.unpack_from("<Q", view, offset + 32)[0]
    return entries
