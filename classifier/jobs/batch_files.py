"""The files of a batch: uploaded files or a ZIP's entries, checked by name and size before any is read."""

import hashlib
import io
import logging
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError

from classifier.cells.validation import ImageRejected, human_size, too_large_message
from classifier.files import clean_filename

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def max_files() -> int:
    """Most files one job may hold (HEMATOVISION_BATCH_MAX_FILES, default 1000)."""
    return settings.HEMATOVISION_BATCH_MAX_FILES


def max_archive_bytes() -> int:
    """Most bytes a ZIP may hold, as sent and expanded (HEMATOVISION_BATCH_MAX_ARCHIVE_MB, default 2048)."""
    return int(settings.HEMATOVISION_BATCH_MAX_ARCHIVE_MB * 1024 * 1024)


def _file_size(file) -> int | None:
    """An upload's size (``.size``), or a file object's by seeking; None when it cannot tell."""
    size = getattr(file, "size", None)
    if size is not None:
        return size
    try:
        position = file.tell()
        size = file.seek(0, io.SEEK_END)
        file.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return size


def check_archive_size(archive) -> None:
    """Refuse a ZIP over the archive limit before reading it (413, as an image over its own limit).

    The upload handler keeps no content of such a file (``uploads.OversizeUpload``), so it must be
    refused by its size, not reported as an unreadable ZIP.
    """
    size, limit = _file_size(archive), max_archive_bytes()
    if size is not None and size > limit:
        raise ImageRejected(
            "file_too_large", f"The archive is {human_size(size)}; the limit is {human_size(limit)}.", 413
        )


@dataclass(frozen=True)
class Upload:
    """One file of a batch as received: its bytes, or why it was refused before staging."""

    name: str
    data: bytes | None = None
    error_code: str = ""
    error_message: str = ""


def _display_name(name: str) -> str:
    return clean_filename(name) or "(unnamed)"


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name.lower()).suffix in IMAGE_EXTENSIONS


def _too_large(name: str, size: int) -> Upload:
    return Upload(_display_name(name), None, "file_too_large", too_large_message(size))


def _not_an_image(name: str) -> Upload:
    return Upload(
        _display_name(name),
        None,
        "not_an_image",
        "Not an image file; upload JPEG, PNG, TIFF, BMP or WebP (by extension).",
    )


def uploaded_files(files: Iterable) -> Iterator[Upload]:
    """Uploads from Django UploadedFile objects or ``(name, bytes)`` pairs."""
    limit = settings.HEMATOVISION_MAX_UPLOAD_BYTES
    for item in files:
        if isinstance(item, tuple):
            name, data = item
            size = len(data)
        else:
            name, size, data = item.name, item.size, None
        if not _is_image_name(name):
            yield _not_an_image(name)
            continue
        if size > limit:
            yield _too_large(name, size)
            continue
        if data is None:
            data = item.read()
        yield Upload(_display_name(name), data)


def _unsafe_entry(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _open_archive(archive) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValidationError("The archive is not a readable ZIP file.", code="bad_archive") from exc


def _file_entries(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's entries other than directories; refused when more than one job may hold."""
    entries = [info for info in zf.infolist() if not info.is_dir()]
    if len(entries) > max_files():
        raise ValidationError(
            f"The archive holds {len(entries)} files; the limit is {max_files()} per job.",
            code="too_many_files",
        )
    return entries


def _is_resource_fork(name: str) -> bool:
    """macOS's ``__MACOSX/`` folder and ``._`` files: skipped, not reported."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return "__MACOSX" in parts or bool(parts and parts[-1].startswith("._"))


def _refused_by_header(info: zipfile.ZipInfo, limit: int) -> Upload | None:
    """The per-file error an entry gets from its header alone (path, encryption, name, declared
    size), or None when it may be read."""
    name = info.filename
    if _unsafe_entry(name):
        return Upload(
            _display_name(name),
            None,
            "unsafe_path",
            "The archive entry has an absolute or '..' path; it was not read.",
        )
    if info.flag_bits & 0x1:
        return Upload(_display_name(name), None, "encrypted", "The archive entry is encrypted.")
    if not _is_image_name(name):
        return _not_an_image(name)
    if info.file_size > limit:
        return _too_large(name, info.file_size)
    return None


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Upload:
    """The entry's bytes, read up to one byte over ``limit`` (its header may understate its size)."""
    name = info.filename
    try:
        with zf.open(info) as handle:
            data = handle.read(limit + 1)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
        return Upload(
            _display_name(name), None, "corrupt_entry", f"The archive entry could not be read: {exc}"
        )
    if len(data) > limit:
        return _too_large(name, len(data))
    return Upload(_display_name(name), data)


def archive_files(archive) -> Iterator[Upload]:
    """Uploads from a ZIP archive, read safely.

    Nothing is extracted to disk. Directories and macOS resource forks are
    skipped; entries with absolute or ``..`` paths, encrypted entries,
    non-images and oversized entries become per-file errors. Reads are bounded
    per entry (the upload limit) and in total (HEMATOVISION_BATCH_MAX_ARCHIVE_MB).
    """
    zf = _open_archive(archive)
    limit = settings.HEMATOVISION_MAX_UPLOAD_BYTES
    total_limit = max_archive_bytes()
    with zf:
        total = 0
        for info in _file_entries(zf):
            if _is_resource_fork(info.filename):
                continue
            refused = _refused_by_header(info, limit)
            if refused is not None:
                yield refused
                continue
            total += info.file_size
            if total > total_limit:
                raise ValidationError(
                    f"The archive expands to more than {human_size(total_limit)}; "
                    "split it into smaller jobs.",
                    code="archive_too_large",
                )
            yield _read_entry(zf, info, limit)


def external_id_for(*, accession: str, sha256: str, cell: int | None = None) -> str:
    """The classification's idempotency key: one image (or one located cell) per specimen."""
    key = f"{accession}\n{sha256}" + (f"\n{cell}" if cell is not None else "")
    return ("fld-" if cell is not None else "bat-") + hashlib.sha256(key.encode()).hexdigest()
