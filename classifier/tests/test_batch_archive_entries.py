"""A ZIP's entries one by one (``batch_files.archive_files``), pinned: what is skipped, what becomes
a per-file error (unsafe path, encrypted, not an image, over the upload limit, unreadable) and when
the whole archive is refused (not a ZIP, too many files, expanding past the archive limit)."""

import io
import zipfile

import pytest
from django.core.exceptions import ValidationError

from classifier.cells.validation import too_large_message
from classifier.jobs.batch_files import Upload, archive_files

UNSAFE = "The archive entry has an absolute or '..' path; it was not read."


def _zip(*entries: tuple[str, bytes], encrypted: tuple[str, ...] = ()) -> io.BytesIO:
    """A stored (uncompressed) ZIP; the entries named in ``encrypted`` have the encryption bit set in
    their central-directory header (zipfile writes no encrypted entries)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    raw = bytearray(buffer.getvalue())
    for name in encrypted:
        header = raw.index(b"PK\x01\x02")  # the first central-directory header
        while raw[header + 46 : header + 46 + len(name)] != name.encode():
            header = raw.index(b"PK\x01\x02", header + 4)
        raw[header + 8] |= 0x1  # general purpose bit 0: encrypted
    return io.BytesIO(bytes(raw))


def test_entries_are_skipped_refused_or_read_in_their_order(settings):
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 100
    archive = _zip(
        ("folder/", b""),
        ("__MACOSX/._a.png", b"fork"),
        ("cells/._b.png", b"fork"),
        ("../escape.png", b"x"),
        ("/abs.png", b"x"),
        ("C:evil.png", b"x"),
        ("locked.png", b"x"),
        ("notes.txt", b"x"),
        ("big.png", b"x" * 101),
        ("cells\\ok.PNG", b"a" * 100),
        ("deep/two.jpg", b"b"),
        encrypted=("locked.png",),
    )
    assert list(archive_files(archive)) == [
        Upload("escape.png", None, "unsafe_path", UNSAFE),
        Upload("abs.png", None, "unsafe_path", UNSAFE),
        Upload("C:evil.png", None, "unsafe_path", UNSAFE),
        Upload("locked.png", None, "encrypted", "The archive entry is encrypted."),
        Upload(
            "notes.txt", None, "not_an_image",
            "Not an image file; upload JPEG, PNG, TIFF, BMP or WebP (by extension).",
        ),
        Upload("big.png", None, "file_too_large", too_large_message(101)),
        Upload("ok.PNG", b"a" * 100),
        Upload("two.jpg", b"b"),
    ]


def test_an_entry_that_cannot_be_read_is_a_per_file_error():
    archive = _zip(("bad.png", b"original"), ("good.png", b"fine"))
    raw = bytearray(archive.getvalue())
    raw[raw.index(b"original")] = ord("O")  # the stored bytes no longer match the CRC
    uploads = list(archive_files(io.BytesIO(bytes(raw))))
    assert [(u.name, u.data, u.error_code) for u in uploads] == [
        ("bad.png", None, "corrupt_entry"),
        ("good.png", b"fine", ""),
    ]
    assert uploads[0].error_message.startswith("The archive entry could not be read: Bad CRC-32")


def test_the_archive_is_refused_when_its_entries_expand_past_the_limit(settings):
    settings.HEMATOVISION_BATCH_MAX_ARCHIVE_MB = 250 / (1024 * 1024)  # 250 bytes
    uploads = archive_files(_zip(("a.png", b"a" * 200), ("skip.txt", b"t" * 200), ("b.png", b"b" * 100)))
    assert next(uploads) == Upload("a.png", b"a" * 200)
    assert next(uploads).error_code == "not_an_image"  # refused by name: not counted
    with pytest.raises(ValidationError) as refused:
        next(uploads)
    assert refused.value.code == "archive_too_large"
    assert refused.value.messages == [
        "The archive expands to more than 250 bytes; split it into smaller jobs."
    ]


def test_too_many_files_and_not_a_zip_refuse_the_whole_archive(settings):
    settings.HEMATOVISION_BATCH_MAX_FILES = 2
    archive = _zip(("dir/", b""), ("a.png", b"a"), ("b.png", b"b"))
    assert len(list(archive_files(archive))) == 2  # directories do not count
    with pytest.raises(ValidationError) as refused:
        list(archive_files(_zip(("a.png", b"a"), ("b.png", b"b"), ("c.txt", b"c"))))
    assert (refused.value.code, refused.value.messages) == (
        "too_many_files",
        ["The archive holds 3 files; the limit is 2 per job."],
    )
    with pytest.raises(ValidationError) as refused:
        list(archive_files(io.BytesIO(b"PK not really a zip")))
    assert (refused.value.code, refused.value.messages) == (
        "bad_archive",
        ["The archive is not a readable ZIP file."],
    )
