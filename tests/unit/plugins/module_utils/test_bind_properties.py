# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests (hypothesis) for vfio_bind's selectors and its udev rule writer (issue 18, part C).

Hostile strings - valid values with a newline, NUL, quote, other control characters or Unicode line separators
spliced in, and arbitrary text - must be refused, or accepted exactly: an accepted driver and address give ONE
udev rule line that parses back to precisely that address and driver, and an accepted selector is the same value
in canonical form.
"""

from __future__ import annotations

import re

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _bind
from ansible_collections.hostdev.vfio.plugins.module_utils import _validate as v
from ansible_collections.hostdev.vfio.plugins.module_utils._bind import BindError, Request
from hypothesis import given, settings
from hypothesis import strategies as st

SPLICE = st.sampled_from(["\n", "\r", "\x00", "\t", " ", '"', ",", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "$"])
VALID_DRIVERS = st.sampled_from(["vfio-pci", "pci-stub", "xhci_hcd", "mlx5_vfio_pci", "e1000e", "snd_hda_intel"])
HEX = "0123456789abcdefABCDEF"
VALID_ADDRESSES = st.builds(
    lambda d, b, s, f, short: f"{b}:{s}.{f}" if short else f"{d}:{b}:{s}.{f}",
    st.text(HEX, min_size=4, max_size=4),
    st.text(HEX, min_size=2, max_size=2),
    st.text(HEX, min_size=2, max_size=2),
    st.sampled_from("01234567"),
    st.booleans(),
)
VALID_IDS = st.builds(
    lambda a, b: f"{a}:{b}", st.text(HEX, min_size=4, max_size=4), st.text(HEX, min_size=4, max_size=4)
)
VALID_CLASSES = st.text(HEX, min_size=2, max_size=6).filter(lambda c: len(c) % 2 == 0)


def hostile(valid):
    """A valid value with hostile characters spliced in at any position, or arbitrary text, or the valid value."""

    @st.composite
    def spliced(draw):
        value = draw(valid)
        for _splice in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(value)))
            value = value[:pos] + draw(SPLICE) + value[pos:]
        return value

    return st.one_of(spliced(), st.text(max_size=40), valid)


CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@settings(max_examples=300, deadline=None)
@given(driver=hostile(VALID_DRIVERS), address=hostile(VALID_ADDRESSES), ids=VALID_IDS)
def test_udev_rule_is_one_line_with_exactly_the_address_and_driver_or_refused(driver, address, ids):
    vendor, device = ids.lower().split(":")
    try:
        line = _bind.render_rule(address, vendor, device, driver)
    except BindError as exc:
        assert "refusing to write a udev rule" in str(exc)
        # refused only when something is really wrong: not canonical, or not a driver name
        assert not re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", address) or not re.fullmatch(
            r"[A-Za-z0-9_-]{1,64}", driver
        )
        return
    assert line.endswith("\n") and line.count("\n") == 1 and not CONTROL.search(line[:-1])
    assert _bind.parse_rules(line) == {address: (line, driver)}
    # udev's own reading: comma-separated KEY op "value" pairs, nothing outside them
    pairs = re.findall(r'\s*([A-Z]+(?:\{[a-z_]+\})?)(==|\+=|=)"([^"]*)"\s*(?:,|$)', line[:-1])
    assert "".join(f'{k}{op}"{val}"' for k, op, val in pairs) == re.sub(r",\s*", "", line[:-1])
    assert dict((k, val) for k, _op, val in pairs)["KERNEL"] == address
    assert dict((k, val) for k, _op, val in pairs)["ATTR{driver_override}"] == driver


@settings(max_examples=300, deadline=None)
@given(driver=hostile(VALID_DRIVERS))
def test_request_driver_refused_or_exact(driver):
    errors = _bind.validate(Request(address=["00:04.0"], driver=driver))
    if driver in _bind.HOST_ALIASES:
        assert errors == []
    elif errors:
        assert errors[0].startswith("driver: ")
        assert CONTROL.search(driver) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", driver)
    else:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", driver) and not driver.endswith("\n")
        assert _bind.render_rule("0000:00:04.0", "8086", "10d3", driver).count("\n") == 1


@settings(max_examples=300, deadline=None)
@given(spec=hostile(VALID_ADDRESSES), ids=st.one_of(st.none(), hostile(VALID_IDS)))
def test_address_selector_refused_or_exact(spec, ids):
    text = spec if ids is None else f"{spec}@{ids}"
    try:
        address, expected = _bind.parse_address_spec(text)
    except v.InvalidValue as exc:
        assert str(exc).startswith("address: ")
        return
    assert not CONTROL.search(text)
    # exactly the value asked for, in the kernel's form: same numbers, nothing dropped but surrounding spaces
    core = text.strip(" ")
    asked, _sep, asked_ids = core.partition("@")
    full = asked if asked.count(":") == 2 else "0000:" + asked
    assert address == full.lower()
    assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", address)
    assert expected == (asked_ids.lower() if ids is not None else None)


@settings(max_examples=300, deadline=None)
@given(value=hostile(VALID_IDS))
def test_ids_selector_refused_or_exact(value):
    errors = _bind.validate(Request(ids=[value]))
    if errors:
        assert errors == [errors[0]] and errors[0].startswith("ids[0]: ")
    else:
        assert re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:[0-9a-fA-F]{4}:[0-9a-fA-F]{4})?", value)


@settings(max_examples=300, deadline=None)
@given(value=hostile(VALID_CLASSES))
def test_class_selector_refused_or_exact(value):
    errors = _bind.validate(Request(device_class=[value]))
    if errors:
        assert errors[0].startswith("device_class[0]: ")
    else:
        assert re.fullmatch(r"(?:[0-9a-fA-F]{2}){1,3}", value)
        assert v.pci_class_prefix("c", value) == value.lower()


@settings(max_examples=200, deadline=None)
@given(query=st.one_of(st.text(max_size=80), hostile(st.just("devices[?vendor_id=='8086'].address"))))
def test_query_refused_or_run_without_a_traceback(query):
    errors = _bind.validate(Request(query=query))
    if errors:
        assert errors[0].startswith("query: ")
        return
    assert not CONTROL.search(query)
    try:
        result = _bind.run_query(query, {"devices": [{"address": "0000:00:04.0", "vendor_id": "8086"}]})
    except BindError as exc:
        assert str(query)[:10] in str(exc) or "query" in str(exc)
    else:
        assert all(re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", a) for a in result)


@pytest.mark.parametrize("depth", [33, 100, 3000])
@pytest.mark.parametrize(("left", "right"), [("(", ")"), ("[", "]"), ("{a:", "}")])
def test_deep_queries_are_refused_by_the_validator(depth, left, right):
    query = left * depth + "devices" + right * depth
    errors = _bind.validate(Request(query=query))
    assert len(errors) == 1
    assert "nests deeper than 32" in errors[0] or "longer than 2048" in errors[0]


def test_query_at_the_depth_limit_is_accepted_and_runs():
    query = "(" * 32 + "devices" + ")" * 32
    assert _bind.validate(Request(query=query)) == []
    assert _bind.run_query(query + "[].address", {"devices": [{"address": "0000:00:04.0"}]}) == ["0000:00:04.0"]
