# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report's picture: each host's PCI tree and IOMMU groups as inline SVG, coloured by verdict.

Left, the PCI tree (a row per function, indented below its upstream bridge); right, one box per IOMMU group with
its members; a thin line joins each function to its place in its group. Every function row, group box and member
is filled with the colour of its verdict (``_handoff.VERDICTS``); a group box takes the colour of the verdict that
weighs most among its endpoints, so a clean group is green at a glance. No script, no external asset: the SVG is
built with xml.etree, which escapes every text and attribute (names come from hosts). Stable hooks for tests and
styling: ``data-host`` on each picture, ``data-group`` on each group box, ``data-address`` and ``data-verdict`` on
each function.
"""

from __future__ import annotations

__metaclass__ = type

import re
import xml.etree.ElementTree as ET

from ansible_collections.hostdev.vfio.plugins.module_utils import _handoff

# verdict -> (fill, what it means), in the legend's order
COLOURS = {
    _handoff.READY: ("#43a047", "ready: on vfio-pci, group viable"),
    _handoff.AS_IS: ("#9ccc65", "as-is: alone in its group, bind it and it is ready"),
    _handoff.PARK: ("#ffca28", "park-companions: the rest of its group must be parked"),
    _handoff.RISK: ("#ef6c00", "risk: its group holds a device the host needs"),
    _handoff.HOST_NEEDS_IT: ("#5c6bc0", "host-needs-it: disk, network or console of the host"),
    _handoff.NO: ("#bdbdbd", "no: IOMMU off, bridge, no group, unreadable"),
}
# a group box shows the verdict that weighs most among its endpoints (bridges count only in a group of bridges)
_WEIGHT = (_handoff.HOST_NEEDS_IT, _handoff.RISK, _handoff.NO, _handoff.PARK, _handoff.AS_IS, _handoff.READY)
_LIGHT_TEXT = {_handoff.READY, _handoff.RISK, _handoff.HOST_NEEDS_IT}

ROW = 22  # px per row
TEXT = 11  # px font size
INDENT = 16
TREE_W = 560
GAP = 70
GROUP_W = 300
PAD = 8
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def colour(verdict: str | None) -> str:
    return COLOURS.get(verdict or _handoff.NO, COLOURS[_handoff.NO])[0]


def group_verdict(members: list[dict]) -> str:
    """The verdict a group box shows: the one that weighs most among its endpoints."""
    endpoints = [m for m in members if not m.get("is_bridge")] or members
    found = {m.get("verdict") for m in endpoints}
    return next((v for v in _WEIGHT if v in found), _handoff.NO)


def dom_id(*parts) -> str:
    """An HTML id from a host name and more (characters outside ``A-Za-z0-9_.-`` become ``_``)."""
    return "-".join(_ID_UNSAFE.sub("_", str(p)) for p in parts)


def _tree_order(devices: list[dict]) -> list[tuple[dict, int]]:
    """(function, depth) in depth-first order below each root, children by address."""
    by_address = {d["address"]: d for d in devices}
    children: dict = {}
    roots = []
    for d in sorted(devices, key=lambda d: d["address"]):
        parent = d.get("parent")
        if parent in by_address and parent != d["address"]:
            children.setdefault(parent, []).append(d)
        else:
            roots.append(d)
    out, seen = [], set()
    stack = [(d, 0) for d in reversed(roots)]
    while stack:
        d, depth = stack.pop()
        if d["address"] in seen:
            continue
        seen.add(d["address"])
        out.append((d, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(d["address"], [])))
    out.extend((d, 0) for d in devices if d["address"] not in seen)  # a parent loop: still drawn
    return out


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _row(parent, x, y, w, verdict, label, title, **data) -> ET.Element:
    g = _sub(parent, "g", **data)
    _sub(g, "title", title)
    _sub(g, "rect", x=x, y=y, width=max(w, 1), height=ROW - 4, rx=3, fill=colour(verdict), stroke="#555")
    _sub(
        g,
        "text",
        label,
        x=x + 5,
        y=y + ROW - 9,
        fill="#fff" if verdict in _LIGHT_TEXT else "#000",
    )
    return g


def host_svg(section: dict) -> str:
    """The picture of one host section of the report (``passthrough_report``'s ``hosts[]``)."""
    host = section["host"]
    devices = section.get("devices") or []
    groups = section.get("groups") or []
    by_address = {d["address"]: d for d in devices}
    order = _tree_order(devices)
    group_rows = sum(len(g.get("devices") or []) + 1 for g in groups)
    height = PAD * 2 + ROW * max(len(order), group_rows + len(groups) * 0.5, 1) + ROW
    width = TREE_W + GAP + GROUP_W + PAD * 2
    svg = ET.Element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "pci-picture",
            "id": dom_id("picture", host),
            "data-host": host,
            "width": str(width),
            "height": str(int(height)),
            "viewBox": f"0 0 {width} {int(height)}",
            "role": "img",
            "font-family": "monospace",
            "font-size": str(TEXT),
        },
    )
    _sub(svg, "title", f"PCI tree and IOMMU groups of {host}")
    _sub(svg, "text", "PCI tree", x=PAD, y=PAD + TEXT, font_weight="bold")
    _sub(svg, "text", "IOMMU groups", x=PAD + TREE_W + GAP, y=PAD + TEXT, font_weight="bold")
    top = PAD + ROW
    lines = _sub(svg, "g", class_="links", stroke="#888", stroke_width="1", fill="none")
    tree = _sub(svg, "g", class_="pci-tree")
    rows_at = {}
    for i, (d, depth) in enumerate(order):
        y = top + i * ROW
        x = PAD + depth * INDENT
        rows_at[d["address"]] = y
        if depth and d.get("parent") in rows_at:
            py = rows_at[d["parent"]] + ROW - 4
            _sub(lines, "path", d=f"M{x - INDENT + 6},{py} V{y + (ROW - 4) / 2} H{x}")
        group = d.get("iommu_group")
        label = " ".join(
            p
            for p in (
                d["address"],
                d.get("ids") or "",
                (d.get("class_name") or d.get("class_id") or "")[:24],
                f"[{d.get('driver') or '-'}]",
                f"g{group}" if group is not None else "",
            )
            if p
        )
        title = f"{d['address']} {d.get('name') or ''}: {d.get('verdict')} - {d.get('verdict_summary') or ''}"
        _row(
            tree,
            x,
            y,
            TREE_W - x,
            d.get("verdict"),
            label,
            title,
            class_="function",
            data_address=d["address"],
            data_verdict=d.get("verdict") or _handoff.NO,
        )
    gx = PAD + TREE_W + GAP
    boxes = _sub(svg, "g", class_="iommu-groups")
    y = top
    if not groups:
        _sub(boxes, "text", "no IOMMU groups (IOMMU off)", x=gx, y=y + ROW - 9)
    for g in groups:
        members = [by_address.get(a, {"address": a, "verdict": _handoff.NO}) for a in g.get("devices") or []]
        verdict = group_verdict(members)
        box = _sub(
            boxes,
            "g",
            class_="iommu-group",
            id=dom_id("group", host, g["id"]),
            data_host=host,
            data_group=g["id"],
            data_verdict=verdict,
            data_viable="yes" if g.get("viable") else "no",
        )
        h = ROW * (len(members) + 1) + 2
        _sub(box, "title", f"IOMMU group {g['id']}: {verdict}, {'viable' if g.get('viable') else 'not viable'}")
        _sub(box, "rect", x=gx, y=y, width=GROUP_W, height=h, rx=5, fill=colour(verdict), stroke="#333")
        _sub(
            box,
            "text",
            f"group {g['id']} ({'viable' if g.get('viable') else 'not viable'})",
            x=gx + 6,
            y=y + ROW - 8,
            font_weight="bold",
            fill="#fff" if verdict in _LIGHT_TEXT else "#000",
        )
        for j, m in enumerate(members):
            my = y + ROW * (j + 1)
            label = f"{m['address']} [{m.get('driver') or '-'}]"
            _row(box, gx + 12, my, GROUP_W - 20, m.get("verdict"), label, f"{m['address']}: {m.get('verdict')}")
            if m["address"] in rows_at:
                ty = rows_at[m["address"]] + (ROW - 4) / 2
                _sub(lines, "path", d=f"M{PAD + TREE_W},{ty} L{gx + 12},{my + (ROW - 4) / 2}", stroke_opacity="0.4")
        y += h + ROW // 2
    return ET.tostring(svg, encoding="unicode")


def legend_svg() -> str:
    """The colours of the verdicts, once per page."""
    width, height = 760, PAD * 2 + ROW * len(COLOURS)
    svg = ET.Element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "legend",
            "id": "legend",
            "width": str(width),
            "height": str(height),
            "viewBox": f"0 0 {width} {height}",
            "font-family": "sans-serif",
            "font-size": "12",
        },
    )
    _sub(svg, "title", "Verdict colours")
    for i, (verdict, (fill, meaning)) in enumerate(COLOURS.items()):
        y = PAD + i * ROW
        g = _sub(svg, "g", data_verdict=verdict)
        _sub(g, "rect", x=PAD, y=y, width=40, height=ROW - 6, rx=3, fill=fill, stroke="#555")
        _sub(g, "text", meaning, x=PAD + 50, y=y + ROW - 10)
    return ET.tostring(svg, encoding="unicode")


def pictures(report: dict) -> dict:
    """``{"legend": svg, "hosts": {host: svg}}`` for every reachable host of a fleet report."""
    return {
        "legend": legend_svg(),
        "hosts": {s["host"]: host_svg(s) for s in report.get("hosts") or [] if s.get("reachable")},
    }
