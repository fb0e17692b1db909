# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names in an initramfs image, read the way the kernel reads it (init/initramfs.c).

An image is a sequence of segments, NUL padding between them: newc cpio archives (magic 070701 or 070702, at a
4-byte boundary), and compressed streams whose content is again newc archives. initramfs-tools, dracut and
mkinitcpio all write an uncompressed early archive (CPU microcode, when there is any) followed by one compressed
main archive. gzip, xz, lzma and bzip2 streams are read with Python's standard library (and their end is known,
so segments after them are read too); zstd and lz4 streams through the ``zstd``/``lz4`` program with the rest of
the image as input. Anything else (lzo, a squashfs root, damage) raises ``Unreadable``: the caller then asks the
generator's own lister, which is slower (a shell script that unpacks the image; lsinitrd took 10.6 s on a TCG lab
guest where this reader took 0.8 s, benchmarks/initramfs_list.py) but knows its own formats.
"""

from __future__ import annotations

__metaclass__ = type

import bz2
import lzma
import subprocess
import zlib

CHUNK = 1 << 20
HEADER = 110  # magic (6) + 13 fields of 8 hex digits
MAGICS = (b"070701", b"070702")
TRAILER = b"TRAILER!!!"
# Compressed stream magics, as the kernel's decompress_method() knows them.
_FORMATS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x1f\x9e", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
_PROGRAMS = {"zstd": ("zstd", "-dcq"), "lz4": ("lz4", "-dcq")}


class Unreadable(Exception):
    """The image holds something this reader does not read; the message says what and where."""


class _Reader:
    """A byte stream from an iterator of chunks: exact reads and skips, the position, and data pushed back."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buf = b""
        self._at = 0
        self.pos = 0

    def _fill(self, n: int) -> bool:
        while len(self._buf) - self._at < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buf = self._buf[self._at :] + chunk
            self._at = 0
        return True

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buf[self._at : self._at + n]

    def read(self, n: int) -> bytes:
        data = self.peek(n)
        self._at += len(data)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            if len(self._buf) == self._at and not self._fill(1):
                raise Unreadable(f"the data ends {n} byte(s) early, at byte {self.pos}")
            take = min(n, len(self._buf) - self._at)
            self._at += take
            self.pos += take
            n -= take

    def skip_nuls(self) -> None:
        while self._fill(1):
            rest = self._buf[self._at :]
            zeros = len(rest) - len(rest.lstrip(b"\0"))
            self._at += zeros
            self.pos += zeros
            if zeros < len(rest):
                return

    def take(self) -> bytes:
        """Whatever is buffered, else the next chunk; b'' at the end."""
        if len(self._buf) == self._at and not self._fill(1):
            return b""
        data = self._buf[self._at :]
        self._buf, self._at = b"", 0
        self.pos += len(data)
        return data

    def unread(self, data: bytes) -> None:
        if data:
            self._buf = data + self._buf[self._at :]
            self._at = 0
            self.pos -= len(data)


def _archive(reader: _Reader, out: list) -> None:
    """One newc archive, up to and including its trailer; the names go to ``out``."""
    while True:
        start = reader.pos
        header = reader.read(HEADER)
        if len(header) < HEADER or header[:6] not in MAGICS:
            raise Unreadable(f"no cpio header at byte {start}")
        try:
            filesize = int(header[54:62], 16)
            namesize = int(header[94:102], 16)
        except ValueError:
            raise Unreadable(f"a cpio header with a field that is not hexadecimal at byte {start}") from None
        name = reader.read(namesize)
        if len(name) < namesize or namesize == 0 or name[-1:] != b"\0":
            raise Unreadable(f"a cpio name that does not end where its header says, at byte {start}")
        reader.skip(-reader.pos % 4)
        name = name[:-1]
        if name == TRAILER:
            return
        reader.skip(filesize)
        reader.skip(-reader.pos % 4)
        out.append(name.decode("utf-8", "surrogateescape"))


def _archives(reader: _Reader, out: list) -> None:
    """The content of a decompressed stream: newc archives with NUL padding, to the end."""
    while True:
        reader.skip_nuls()
        head = reader.peek(6)
        if not head:
            return
        if head not in MAGICS or reader.pos % 4:
            raise Unreadable(f"decompressed data that is not a cpio archive at byte {reader.pos}")
        _archive(reader, out)


def _format(head: bytes) -> str | None:
    for magic, name in _FORMATS:
        if head.startswith(magic):
            return name
    return None


def _decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(47)  # gzip or zlib header, detected
    if kind == "xz":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ)
    if kind == "lzma":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    return bz2.BZ2Decompressor()


def _standard(reader: _Reader, kind: str, out: list) -> None:
    """A stream the standard library decompresses; the data after its end stays in ``reader``."""
    start = reader.pos
    dec = _decompressor(kind)

    def chunks():
        while not dec.eof:
            chunk = reader.take()
            if not chunk:
                raise Unreadable(f"the {kind} stream from byte {start} ends early")
            try:
                data = dec.decompress(chunk)
            except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
                raise Unreadable(f"the {kind} stream from byte {start}: {exc}") from None
            if data:
                yield data

    # _archives reads to the end of chunks(), so the stream has ended and the decompressor holds what follows it.
    _archives(_Reader(chunks()), out)
    reader.unread(dec.unused_data)


def _program(path: str, offset: int, kind: str, which, out: list) -> None:
    """A stream only a program decompresses: it gets the rest of the image, which must be that stream."""
    name, *args = _PROGRAMS[kind]
    program = which(name)
    if not program:
        raise Unreadable(f"a {kind} stream at byte {offset} and no {name} program to read it")
    with open(path, "rb") as src:
        src.seek(offset)
        proc = subprocess.Popen(  # an argv list: the program's path and fixed options; the image is stdin
            [program, *args], stdin=src, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            _archives(_Reader(iter(lambda: proc.stdout.read(CHUNK), b"")), out)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
    if rc != 0:
        raise Unreadable(f"{name} could not decompress the data from byte {offset} (rc={rc})")


def names(path: str, which) -> list[str]:
    """Every name in the image at ``path``, in archive order, without a leading ``./`` or ``/`` (``.`` itself is
    left out). ``which(program)`` gives a program's path or None. Raises ``Unreadable`` (see the module's text)
    and ``OSError`` when the file cannot be read."""
    out: list[str] = []
    with open(path, "rb") as image:
        reader = _Reader(iter(lambda: image.read(CHUNK), b""))
        while True:
            reader.skip_nuls()
            head = reader.peek(6)
            if not head:
                break
            if head in MAGICS and reader.pos % 4 == 0:
                _archive(reader, out)
                continue
            kind = _format(head)
            if kind is None:
                raise Unreadable(f"data that is neither a cpio archive nor a known compression at byte {reader.pos}")
            if kind in _PROGRAMS:
                _program(path, reader.pos, kind, which, out)
                break
            _standard(reader, kind, out)
    return [n for n in (normal(name) for name in out) if n]


def normal(name: str) -> str:
    """A name in an image as a path without a leading ``./`` or ``/``; ``""`` for the image's root (``.``)."""
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    return "" if name == "." else name
