# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The initramfs reader against images made by the real tools: GNU cpio writes the archives (and lists them with
``cpio -t``, the oracle), gzip, xz, bzip2, zstd and lz4 compress them, concatenated as initramfs-tools, dracut and
mkinitcpio concatenate them (an uncompressed early archive, then the compressed main one)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _cpio
from ansible_collections.hostdev.vfio.plugins.module_utils import _initramfs as ir
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

COMPRESS = {
    "gzip": ["gzip", "-9", "-n", "-c"],
    "xz": ["xz", "--check=crc32", "-c"],
    "lzma": ["xz", "--format=lzma", "-c"],
    "bzip2": ["bzip2", "-c"],
    "zstd": ["zstd", "-q", "-1", "-c"],
    "lz4": ["lz4", "-q", "-l", "-c"],
}


def which(name):
    return shutil.which(name)


def newc(tree, prefix="./"):
    """A newc archive of ``tree`` written by GNU cpio (names as `find` prints them, with or without './')."""
    names = []
    for top, dirs, files in os.walk(tree):
        dirs.sort()
        for entry in [".", *sorted(dirs + files)] if top == str(tree) else sorted(dirs + files):
            path = os.path.relpath(os.path.join(top, entry), tree)
            names.append("." if path == "." else prefix + path)
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
        cwd=tree,
        input="\n".join(names).encode() + b"\n",
        capture_output=True,
        check=True,
    )
    return proc.stdout


def oracle(archive):
    """What GNU cpio lists in one archive, without a leading './' and without the root itself."""
    proc = subprocess.run(["cpio", "--quiet", "-it"], input=archive, capture_output=True, check=True)
    out = []
    for name in proc.stdout.decode("utf-8", "surrogateescape").splitlines():
        while name.startswith("./"):
            name = name[2:]
        if name.lstrip("/") not in ("", "."):
            out.append(name.lstrip("/"))
    return out


@pytest.mark.parametrize(
    ("name", "expected"), [(".", ""), ("./", ""), ("/", ""), ("./usr/lib", "usr/lib"), ("./.hidden", ".hidden")]
)
def test_normal(name, expected):
    assert _cpio.normal(name) == expected


def compress(kind, data):
    return subprocess.run(COMPRESS[kind], input=data, capture_output=True, check=True).stdout


def make_tree(root, files):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def early(tmp_path):
    tree = make_tree(tmp_path / "early", {"kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 1001})
    return newc(tree)


@pytest.fixture
def main(tmp_path):
    tree = make_tree(
        tmp_path / "main",
        {
            "usr/lib/modules/6.12.0/kernel/drivers/vfio/pci/vfio-pci.ko.xz": os.urandom(5000),
            "usr/lib/modules/6.12.0/kernel/drivers/vfio/vfio.ko.xz": os.urandom(3),
            "usr/lib/modules/6.12.0/modules.dep": b"",
            "etc/modprobe.d/hostdev-vfio.conf": b"options vfio-pci ids=8086:10d3\n",
            "usr/lib/udev/rules.d/05-hostdev vfio \xe9.rules": b"x" * 7,
        },
    )
    os.symlink("usr/lib", tree / "lib")
    os.link(tree / "etc/modprobe.d/hostdev-vfio.conf", tree / "etc/modprobe.d/hardlink.conf")
    return newc(tree, prefix="")


def write(tmp_path, data):
    path = tmp_path / "initrd.img"
    path.write_bytes(data)
    return str(path)


def test_plain_archive(tmp_path, main):
    assert _cpio.names(write(tmp_path, main), which) == oracle(main)
    assert "usr/lib/udev/rules.d/05-hostdev vfio \xe9.rules" in oracle(main)


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_early_archive_then_compressed_main(tmp_path, early, main, kind):
    if shutil.which(COMPRESS[kind][0]) is None:
        pytest.fail(f"{COMPRESS[kind][0]} is missing: make units installs it")
    image = write(tmp_path, early + compress(kind, main))
    assert _cpio.names(image, which) == oracle(early) + oracle(main)


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "lzma"])
def test_segments_after_a_stream_the_library_reads(tmp_path, early, main, kind):
    """The kernel reads on after a compressed stream; so does the reader, NUL padding included. An archive after
    a stream must start at a multiple of 4 bytes (the kernel's rule; the reader refuses it elsewhere)."""
    streams = compress(kind, early) + b"\0" * 9 + compress(kind, main)
    image = write(tmp_path, streams + b"\0" * (512 + -len(streams) % 4) + early)
    assert _cpio.names(image, which) == oracle(early) + oracle(main) + oracle(early)
    if len(streams) % 4:
        with pytest.raises(_cpio.Unreadable, match=f"at byte {len(streams) + 512}"):
            _cpio.names(write(tmp_path, streams + b"\0" * 512 + early), which)


def test_two_archives_with_padding_inside_one_stream(tmp_path, early, main):
    image = write(tmp_path, compress("zstd", early + b"\0" * 12 + main))
    assert _cpio.names(image, which) == oracle(early) + oracle(main)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89LZO\x00\r\n\x1a\n" + b"x" * 64, "neither a cpio archive nor a known compression"),
        (b"garbage!" * 20, "neither a cpio archive nor a known compression"),
        (b"070701" + b"Z" * 104, "not hexadecimal"),
    ],
)
def test_what_it_does_not_read_is_unreadable(tmp_path, data, message):
    with pytest.raises(_cpio.Unreadable, match=message):
        _cpio.names(write(tmp_path, data), which)


def test_truncated_streams_are_unreadable(tmp_path, early, main):
    whole = compress("gzip", main)
    with pytest.raises(_cpio.Unreadable, match=r"gzip stream from byte \d+ ends early"):
        _cpio.names(write(tmp_path, early + whole[: len(whole) // 2]), which)
    with pytest.raises(_cpio.Unreadable, match=r"ends \d+ byte\(s\) early|no cpio header"):
        _cpio.names(write(tmp_path, main[: len(main) // 2]), which)
    with pytest.raises(_cpio.Unreadable, match="zstd could not decompress"):
        _cpio.names(write(tmp_path, early + compress("zstd", main)[:-40]), which)


def test_a_program_stream_with_trailing_data_or_no_program_is_unreadable(tmp_path, early, main):
    with pytest.raises(_cpio.Unreadable, match="zstd could not decompress"):
        _cpio.names(write(tmp_path, early + compress("zstd", main) + b"not zstd at all"), which)
    with pytest.raises(_cpio.Unreadable, match="no zstd program"):
        _cpio.names(write(tmp_path, early + compress("zstd", main)), lambda name: None)


def test_list_image_reads_directly_and_falls_back_to_the_lister(tmp_path, early, main):
    """The operation's listing: the reader first; an image it does not read goes to the generator's lister."""
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, "usr/lib/modules/6.1/kernel/vfio.ko\n", ""

    tools = {"lsinitramfs": "/usr/bin/lsinitramfs", "which": which}
    image = write(tmp_path, early + compress("zstd", main))
    assert ir.list_image(run, "initramfs-tools", image, tools) == (oracle(early) + oracle(main), "cpio")
    assert calls == []
    (tmp_path / "initrd.img").write_bytes(b"\x89LZO\x00\r\n\x1a\n" + b"x" * 64)
    listed = ir.list_image(run, "initramfs-tools", image, tools)
    assert listed == (["usr/lib/modules/6.1/kernel/vfio.ko"], "lsinitramfs")
    assert calls == [["/usr/bin/lsinitramfs", image]]
    with pytest.raises(ir.InitramfsError, match="cannot read"):
        ir.list_image(run, "initramfs-tools", str(tmp_path / "missing.img"), tools)


_NAME = st.text(alphabet="abcXYZ019._- +=\xe9", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.lists(_NAME, min_size=1, max_size=3).map("/".join), st.binary(max_size=700), min_size=1, max_size=8
    ),
    kind=st.sampled_from(["gzip", "zstd", "xz"]),
    pad=st.integers(0, 3).map(lambda n: n * 4),
)
def test_any_tree_reads_as_cpio_lists_it(tmp_path_factory, early, files, kind, pad):
    # A name that is also another name's directory is not a tree.
    assume(not any(other.startswith(name + "/") for name in files for other in files))
    root = make_tree(tmp_path_factory.mktemp("tree"), files)
    archive = newc(root)
    image = write(tmp_path_factory.mktemp("image"), early + b"\0" * pad + compress(kind, archive))
    assert _cpio.names(image, which) == oracle(early) + oracle(archive)
