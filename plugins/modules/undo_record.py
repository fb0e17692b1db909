#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: undo_record
short_description: Record files before their first change, and give back exactly what was there
version_added: 0.2.0
description:
  - Keeps the C(files) section of the host's undo record, C(undo-record.json) in O(state_dir) below O(root) - the
    same record in which M(hostdev.vfio.kernel_cmdline) (O(hostdev.vfio.kernel_cmdline#module:record)) keeps the
    kernel arguments it changed.
  - V(recorded) notes, for each file of O(files) the record does not know yet, its content (or that it did not
    exist). Run it before the task that writes the files. The first sight wins - a later run never replaces
    the entry - so the record keeps what was there before this collection's first change, also when a run was
    stopped half way.
  - V(restored) gives each file of O(files) back - the recorded content byte for byte, or no file when there was
    none - and drops its entry. A file with no entry is left alone, or removed with O(unrecorded=remove) (files
    that only this collection ever writes, from hosts configured before the record existed).
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  files:
    description:
      - Absolute paths on the managed system (taken below O(root)); each must stay below O(root).
    type: list
    elements: path
    required: true
  state:
    description:
      - V(recorded) notes the files' current content; V(restored) gives it back.
    type: str
    choices: [recorded, restored]
    default: recorded
  unrecorded:
    description:
      - With O(state=restored), what happens to a file the record has no entry for.
    type: str
    choices: [keep, remove]
    default: keep
  root:
    description:
      - Root of the file system the files and the record are in.
    type: path
    default: /
  state_dir:
    description:
      - Directory of the undo record, below O(root).
    type: path
    default: /var/lib/hostdev-vfio
attributes:
  check_mode:
    support: full
    description: Reports what would be recorded or restored and writes nothing.
  diff_mode:
    support: full
    description: Each restored file before and after.
  platform:
    support: full
    platforms: posix
    description: Any POSIX host.
seealso:
  - module: hostdev.vfio.kernel_cmdline
"""

EXAMPLES = r"""
- name: Note the role's files before writing them
  hostdev.vfio.undo_record:
    files: [/etc/modprobe.d/hostdev-vfio-passthrough.conf]

- name: Give them back
  hostdev.vfio.undo_record:
    files: [/etc/modprobe.d/hostdev-vfio-passthrough.conf]
    state: restored
    unrecorded: remove
"""

RETURN = r"""
record_file:
  description: The undo record's path (with O(root)).
  returned: always
  type: str
  sample: /var/lib/hostdev-vfio/undo-record.json
recorded:
  description: Files noted by this call (V(recorded)).
  returned: always
  type: list
  elements: str
  sample: [/etc/modprobe.d/hostdev-vfio-passthrough.conf]
restored:
  description: Files given back by this call (V(restored)), with what they got back.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/modprobe.d/hostdev-vfio-passthrough.conf", "content": "absent"}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _record, _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._files import FileProblem, read_bytes


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="path", required=True),
            state=dict(type="str", choices=["recorded", "restored"], default="recorded"),
            unrecorded=dict(type="str", choices=["keep", "remove"], default="keep"),
            root=dict(type="path", default="/"),
            state_dir=dict(type="path", default=_record.DEFAULT_STATE_DIR),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        record_file = _record.record_path(p["root"], p["state_dir"])
        targets = {path: _validate.rooted_path("files", p["root"], path) for path in p["files"]}
        record = _record.load(record_file)
        current = {path: read_bytes(real, "file") for path, real in targets.items()}
    except (_validate.InvalidValue, _record.RecordError, FileProblem) as exc:
        module.fail_json(msg=str(exc))

    result = dict(changed=False, record_file=record_file, recorded=[], restored=[], diff=[])
    writes = []  # (real path, bytes or None)
    if p["state"] == "recorded":
        try:
            for path in p["files"]:
                if _record.add_file(record, path, current[path]):
                    result["recorded"].append(path)
        except _record.RecordError as exc:
            module.fail_json(msg=str(exc))
    else:
        for path in p["files"]:
            entry = record["files"].pop(path, None)
            if entry is None:
                if p["unrecorded"] == "keep" or current[path] is None:
                    continue
                want = None
            else:
                try:
                    want = _record.decode(path, entry)
                except _record.RecordError as exc:
                    module.fail_json(msg=str(exc))
                result["changed"] = True  # the record loses the entry
            if want != current[path]:
                writes.append((targets[path], want))
                result["diff"].append(_diff(path, current[path], want))
            result["restored"].append({"path": path, "content": "absent" if want is None else f"{len(want)} bytes"})
    result["changed"] = bool(result["changed"] or result["recorded"] or writes)
    if module.check_mode or not result["changed"]:
        module.exit_json(**result)
    try:
        if p["state"] == "recorded":
            _record.save(record_file, record, module.atomic_move)
        else:
            for real, want in writes:
                _record.put_back(real, want, module.atomic_move)
            _record.save(record_file, record, module.atomic_move)  # entries go only once their files are back
    except _record.RecordError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


def _diff(path, before, after):
    def text(data):
        return "" if data is None else data.decode("utf-8", "replace")

    return {"before_header": path, "after_header": path, "before": text(before), "after": text(after)}


if __name__ == "__main__":
    main()
