# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report playbook's Markdown and HTML templates render the filter's report with every reason visible."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from ansible_collections.hostdev.vfio.plugins.filter.passthrough import FilterModule, passthrough_report

from .test_passthrough import bound_facts, lab_facts

TEMPLATES = Path(__file__).resolve().parents[4] / "playbooks" / "templates"


def render(name: str, report: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True, autoescape=False)
    env.filters.update({f"hostdev.vfio.{name}": f for name, f in FilterModule().filters().items()})
    return env.get_template(name).render(__report=report)


@pytest.fixture
def report():
    facts = lab_facts(enabled=False)
    facts["devices"][1]["device_name"] = "<script>alert(1)</script>"
    force = {"intel": {"0000:00:01.0": ["console"], "0000:00:05.0": ["storage", "network"]}}
    return passthrough_report(
        ["intel", "noiommu", "gone"], [bound_facts(), facts, None], {"gone": "unreachable"}, force=force
    )


def test_markdown(report):
    text = render("report.md.j2", report)
    assert "3 hosts, 1 unreachable; IOMMU on in 1;" in text
    assert "| intel | on | intel | 4 | 2 / 6 |" in text
    assert "| noiommu | off | intel | 0 | 0 / 6 |" in text
    assert "| gone | unreachable | | | unreachable |" in text
    assert (
        "| 0000:01:02.0 | 8086:100e |  | 0200 | pci-stub | 7 | no | on pci-stub (held for a group companion) |" in text
    )
    assert "IOMMU off; on host driver e1000e" in text
    assert "| 7 | 0000:00:08.0, 0000:01:01.0, 0000:01:02.0 | yes | yes |  |" in text


def test_html_escapes_and_marks_readiness(report):
    html = render("report.html.j2", report)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert '<h2 id="noiommu">noiommu</h2>' in html
    # a ready function, no reasons, QEMU not asked, verdict ready
    assert '<td class="yes">yes</td><td></td><td>-</td><td class="yes">ready</td><td>ready</td></tr>' in html
    assert "group 0 shared with" not in html  # a device never blocks itself
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_markdown_verdicts_and_handoff_blocks(report):
    text = render("report.md.j2", report)
    assert "| 0000:01:02.0 | 8086:100e |" in text
    assert "| park-companions | needs its companions parked: 0000:01:01.0 (vfio-pci) |" in text
    nova = report["hosts"][0]["handoff"]["nova"]["text"]
    assert "```ini\n[pci]\ndevice_spec = " in text and nova in text
    assert '<hostdev mode="subsystem" type="pci" managed="no">' in text
    assert "\tmap id=8086:10d3,iommugroup=3,node=intel,path=0000:00:04.0,subsystem-id=1af4:1100\n" in text
    assert '"pciVendorSelector": "8086:10D3"' in text
    assert "No function to hand off." in text  # the host without IOMMU


def test_html_handoff_blocks_are_escaped(report):
    html = render("report.html.j2", report)
    assert (
        '<pre class="handoff-libvirt">&lt;hostdev mode=&#34;subsystem&#34; type=&#34;pci&#34; managed=&#34;no&#34;&gt;'
        in html
    )
    assert '<pre class="handoff-nova">[pci]\ndevice_spec = {&#34;vendor_id&#34;: &#34;8086&#34;' in html
    assert "<hostdev" not in html
    assert '<td class="no">no</td><td>no: the IOMMU is off</td>' in html


def test_forced_checks_beside_their_function(report):
    """Markdown, HTML and the JSON the playbook writes all say which checks were forced for which function."""
    markdown = (
        "| 0000:00:01.0 **forced: console** | 1234:1111 |",
        "| 0000:00:05.0 **forced: storage, network** | 8086:293e |",
        "| 0000:00:04.0 | 8086:10d3 |",
        "- Forced (passthrough_force): 0000:00:01.0: console\n",
    )
    html = (
        '<tr><td>0000:00:01.0 <span class="forced">forced: console</span></td><td>1234:1111</td>',
        "<tr><td>0000:00:04.0</td><td>8086:10d3</td>",
        '<p class="forced">Forced (passthrough_force): 0000:00:05.0: storage, network</p>',
    )
    for template, expected in (("report.md.j2", markdown), ("report.html.j2", html)):
        text = render(template, report)
        assert [e for e in expected if e not in text] == []
        assert text.count("forced: ") == 2  # noiommu forces nothing
    intel = json.loads(json.dumps(report))["hosts"][0]
    assert intel["forced"] == {"0000:00:01.0": ["console"], "0000:00:05.0": ["storage", "network"]}
    assert [d["forced"] for d in intel["devices"]][:3] == [["console"], [], ["storage", "network"]]
