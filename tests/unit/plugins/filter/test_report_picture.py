# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report's picture in a real browser: report.html from the real template over fake-sysfs facts, rendered by
headless Chromium (Debian's package, installed by `make unit-tools`). The rendered DOM must hold every host's
picture and every IOMMU group with a non-zero box, and the screenshot must show each group in its verdict's colour.
A missing Chromium fails the test: the picture is only proven in a browser."""

from __future__ import annotations

import html.parser
import shutil
import struct
import subprocess
import zlib
from itertools import accumulate
from pathlib import Path

import pytest
from ansible_collections.hostdev.vfio.plugins.filter.passthrough import passthrough_report
from ansible_collections.hostdev.vfio.plugins.module_utils import _handoff, _picture
from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakefleet import FIXTURES, roots
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost

from .test_report_templates import render

WIDTH = 1400  # CSS pixels: the pictures (about 950) and the tables fit
SCALE = 0.5  # device pixels per CSS pixel in the screenshot: a quarter of the bytes to decode, fills stay exact
PROBE = """<script>
for (const el of document.querySelectorAll('svg[data-host], [data-group]')) {
  const r = el.getBoundingClientRect();
  el.setAttribute('data-box', [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(','));
}
const d = document.documentElement;
document.body.setAttribute('data-page', d.scrollWidth + ',' + d.scrollHeight);
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: `make unit-tools` installs Debian's chromium (the picture's oracle)")


def browse(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=True)


class Boxes(html.parser.HTMLParser):
    """Elements with data-host / data-group and their measured boxes, from the dumped DOM."""

    def __init__(self):
        super().__init__()
        self.pictures, self.groups, self.page = {}, {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        box = tuple(int(v) for v in a["data-box"].split(",")) if "data-box" in a else None
        if tag == "svg" and "data-host" in a:
            self.pictures[a["data-host"]] = box
        if "data-group" in a:
            self.groups[(a["data-host"], int(a["data-group"]))] = (box, a.get("data-verdict"))
        if tag == "body" and "data-page" in a:
            self.page = tuple(int(v) for v in a["data-page"].split(","))


def read_png(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, pixels) of an 8-bit RGB or RGBA, non-interlaced PNG (zlib and struct)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    width, height, depth, ctype, _c, _f, interlace = header
    assert depth == 8 and ctype in (2, 6) and interlace == 0, header
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = bytearray()
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], raw[start + 1 : start + 1 + stride]
        if ftype == 0:
            row = bytes(line)
        elif ftype == 1:  # Sub: a running sum per channel
            cur = bytearray(stride)
            for c in range(bpp):
                cur[c::bpp] = bytes(v & 255 for v in accumulate(line[c::bpp]))
            row = bytes(cur)
        elif ftype == 2:  # Up
            row = bytes((a + b) & 255 for a, b in zip(line, prev, strict=True))
        else:
            cur = bytearray(stride)
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                up = prev[i]
                if ftype == 3:
                    cur[i] = (line[i] + ((left + up) >> 1)) & 255
                else:
                    ul = prev[i - bpp] if i >= bpp else 0
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                    cur[i] = (line[i] + pred) & 255
            row = bytes(cur)
        out += row
        prev = row
    return width, height, bpp, bytes(out)


def pixel(png, x: float, y: float) -> tuple[int, int, int]:
    width, _height, bpp, px = png
    i = (int(y) * width + int(x)) * bpp
    return px[i], px[i + 1], px[i + 2]


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def close(a, b, tolerance=6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    names, facts = [], []
    for name, build in sorted(FIXTURES.items()):
        host = build(root / name)
        names.append(f"{name}.example.net")
        facts.append(gather(**roots(host)))
    off = FakeHost(root / "off")  # IOMMU off: a tree, no groups
    off.add_device("0000:00:02.0", "8086:10d3", "020000", driver="e1000e")
    names += ['off<"&>', "gone"]
    facts += [gather(sysfs_root=str(off.sys), proc_root=str(off.proc), dev_root=str(off.dev), names=False), None]
    return passthrough_report(names, facts, {"gone": "unreachable"})


def test_svg_is_built_escaped_and_hooked(report):
    pics = _picture.pictures(report)
    assert set(pics["hosts"]) == {"gpu.example.net", "lab.example.net", 'off<"&>'}
    off = pics["hosts"]['off<"&>']
    assert 'data-host="off&lt;&quot;&amp;&gt;"' in off and "<script" not in off
    for section in report["hosts"][:2]:
        svg = pics["hosts"][section["host"]]
        for g in section["groups"]:
            assert f'data-group="{g["id"]}"' in svg
        for d in section["devices"]:
            assert f'data-address="{d["address"]}" data-verdict="{d["verdict"]}"' in svg
    assert all(f'data-verdict="{v}"' in pics["legend"] for v in _handoff.VERDICTS)


def test_picture_in_headless_chromium(report, tmp_path):
    page = render("report.html.j2", report)
    assert page.count("<svg") == 4  # the legend and three reachable hosts
    (tmp_path / "report.html").write_text(page)
    (tmp_path / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"))

    # the same width for both runs, so the boxes measured in the DOM are where the screenshot has them
    # and the same scale (text is laid out for the device pixels)
    dom = browse(
        tmp_path,
        "--dump-dom",
        f"--window-size={WIDTH},1000",
        f"--force-device-scale-factor={SCALE}",
        (tmp_path / "probe.html").as_uri(),
    ).stdout
    boxes = Boxes()
    boxes.feed(dom)
    want_groups = {(s["host"], g["id"]) for s in report["hosts"] if s["reachable"] for g in s["groups"]}
    assert len(want_groups) >= 12
    assert set(boxes.pictures) == {s["host"] for s in report["hosts"] if s["reachable"]}
    for host, box in boxes.pictures.items():
        assert box and box[2] > 100 and box[3] > 50, (host, box)
    assert set(boxes.groups) == want_groups
    for key, (box, _verdict) in boxes.groups.items():
        assert box and box[2] > 0 and box[3] > 0, (key, box)

    width, height = boxes.page
    assert width == WIDTH and height < 20000, boxes.page
    shot = tmp_path / "report.png"
    browse(
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        f"--force-device-scale-factor={SCALE}",
        (tmp_path / "report.html").as_uri(),
    )
    png = read_png(shot)
    assert abs(png[0] - width * SCALE) <= 2 and abs(png[1] - height * SCALE) <= 2, (png[:2], boxes.page)
    colours = {pixel(png, x, y) for y in range(0, png[1], 7) for x in range(0, png[0], 7)}
    assert len(colours) > 20, "the screenshot is (nearly) blank"
    seen = set()
    for (host, gid), (box, verdict) in sorted(boxes.groups.items()):
        left, top, w, _h = box
        # the group box's own fill: its header row, right of the title, clear of text and links
        got = pixel(png, (left + w - 12) * SCALE, (top + 6) * SCALE)
        want = rgb(_picture.colour(verdict))
        assert close(got, want), f"{host} group {gid} ({verdict}): screenshot shows {got}, expected {want}"
        seen.add(verdict)
    # the fixtures give groups of at least four verdicts, all of them visible in their colours
    assert {_handoff.READY, _handoff.AS_IS, _handoff.PARK, _handoff.HOST_NEEDS_IT} <= seen, seen
