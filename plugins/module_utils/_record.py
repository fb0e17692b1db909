# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's undo record: what this collection changed, and what was there before.

One JSON file in the state directory (``/var/lib/hostdev-vfio/undo-record.json`` below ``root``), beside
vfio_bind's ``bind-state.json`` (the original driver of every rebound device). Two rules make it an undo:

- **Write-ahead.** An entry is written before the change it describes, so a run that is stopped half way leaves
  a record of what it was about to do; the next run completes the change and an undo still reverts it.
- **First sight wins.** An entry is never overwritten by a later run: the second run sees the first run's own
  argument on the command line and must not record it as "already there".

Sections: ``kernel_cmdline`` (per owner name, the arguments asked for and what the configured command line had
for them before) and ``files`` (per path, the content before the first write, or None when there was no file).
An undo drops the entries it reverted; the file goes when it is empty.
"""

from __future__ import annotations

__metaclass__ = type

import base64
import json
import os

from ansible_collections.hostdev.vfio.plugins.module_utils import _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._files import FileProblem, read_bytes, write_atomic
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed

VERSION = 1
DEFAULT_STATE_DIR = "/var/lib/hostdev-vfio"
RECORD_NAME = "undo-record.json"
MAX_FILE_BYTES = 1 << 20  # a recorded file's content is kept in the record; configuration files are small


class RecordError(Exception):
    """The record cannot be read, parsed or written; the message names the file."""


def record_path(root: str, state_dir: str = DEFAULT_STATE_DIR) -> str:
    """The record's path below ``root``; a ``state_dir`` that would leave ``root`` is an InvalidValue."""
    return os.path.join(_validate.rooted_path("state_dir", root, state_dir), RECORD_NAME)


def load(path: str) -> dict:
    """The record (an empty one when there is no file); anything else than the format written here is an error."""
    try:
        data = read_bytes(path, "undo record")
    except FileProblem as exc:
        raise RecordError(str(exc)) from None
    if data is None:
        return {"version": VERSION, "kernel_cmdline": {}, "files": {}}
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RecordError(f"{path}: not a valid undo record ({exc}); fix or remove it") from None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise RecordError(f"{path}: not an undo record of version {VERSION}; fix or remove it")
    for section in ("kernel_cmdline", "files"):
        record.setdefault(section, {})
        if not isinstance(record[section], dict):
            raise RecordError(f"{path}: its {section!r} section is not a mapping; fix or remove it")
    _check_kernel_cmdline(path, record["kernel_cmdline"])
    _check_files(path, record["files"])
    return record


def _check_kernel_cmdline(path: str, section: dict) -> None:
    for owner, entries in section.items():
        if not isinstance(entries, list) or not all(_valid_arg_entry(e) for e in entries):
            raise RecordError(f"{path}: the kernel_cmdline entries of {owner!r} are malformed; fix or remove it")


def _valid_arg_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    if set(entry) == {"arg", "had"}:
        return (
            isinstance(entry["arg"], str)
            and isinstance(entry["had"], list)
            and all(isinstance(h, str) for h in entry["had"])
        )
    return set(entry) == {"removed"} and isinstance(entry["removed"], str)


def _check_files(path: str, section: dict) -> None:
    for name, entry in section.items():
        ok = (
            isinstance(entry, dict)
            and set(entry) == {"before"}
            and (entry["before"] is None or isinstance(entry["before"], str))
        )
        if not ok or not os.path.isabs(name):
            raise RecordError(f"{path}: the files entry {name!r} is malformed; fix or remove it")


def save(path: str, record: dict, atomic_move) -> None:
    """Write the record, or remove the file when both sections are empty."""
    empty = not any(record.get(s) for s in ("kernel_cmdline", "files"))
    try:
        if empty:
            if os.path.exists(path):
                os.unlink(path)
            return
        text = json.dumps(record, indent=1, sort_keys=True) + "\n"
        write_atomic(path, text, atomic_move, mode=0o644)
    except FileProblem as exc:
        raise RecordError(str(exc)) from None
    except OSError as exc:
        raise RecordError(f"cannot remove {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------------ kernel_cmdline
def add_kernel_args(record: dict, owner: str, entries: list[dict]) -> bool:
    """Add the entries the owner does not have yet (first sight wins); whether the record changed.

    An entry is ``{"arg": "name=value", "had": [...]}`` (an argument asked for, with the occurrences of its
    parameter on the configured command line before) or ``{"removed": "name=value"}`` (an argument taken away).
    """
    have = record["kernel_cmdline"].setdefault(owner, [])
    keys = {_entry_key(e) for e in have}
    added = False
    for entry in entries:
        key = _entry_key(entry)
        if key not in keys:
            have.append(entry)
            keys.add(key)
            added = True
    if not have:
        del record["kernel_cmdline"][owner]
    return added


def _entry_key(entry: dict) -> tuple:
    return ("arg", entry["arg"]) if "arg" in entry else ("removed", entry["removed"])


def kernel_args_of(record: dict, owner: str) -> list[dict] | None:
    return record["kernel_cmdline"].get(owner)


def drop_kernel_args(record: dict, owner: str) -> None:
    record["kernel_cmdline"].pop(owner, None)


# ----------------------------------------------------------------------------------------------------------- files
def encode(content: bytes | None) -> str | None:
    return None if content is None else base64.b64encode(content).decode("ascii")


def decode(path: str, entry: dict) -> bytes | None:
    if entry["before"] is None:
        return None
    try:
        return base64.b64decode(entry["before"].encode("ascii"), validate=True)
    except ValueError:
        raise RecordError(f"the recorded content of {path} is not base64; fix or remove the undo record") from None


def add_file(record: dict, path: str, content: bytes | None) -> bool:
    """Record a file's content before its first write (None: there was no file); first sight wins."""
    if path in record["files"]:
        return False
    if content is not None and len(content) > MAX_FILE_BYTES:
        raise RecordError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a configuration file this record keeps")
    record["files"][path] = {"before": encode(content)}
    return True


def put_back(real_path: str, content: bytes | None, atomic_move) -> None:
    """Give a file its recorded content back (None: remove it)."""
    try:
        if content is None:
            if os.path.lexists(real_path):
                os.unlink(real_path)
        else:
            write_atomic(real_path, content, atomic_move)
    except FileProblem as exc:
        raise RecordError(str(exc)) from None
    except OSError as exc:
        raise RecordError(f"cannot remove {real_path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------------- the operation
def run_files(host, files, state="recorded", unrecorded="keep", root="/", state_dir=DEFAULT_STATE_DIR) -> dict:
    """hostdev.vfio.undo_record on ``host`` (``_host.Host``): note each file's content before a first change
    (``recorded``), or give each back as recorded (``restored``; ``unrecorded``: what to do with a file the record
    does not name). Returns the module's result; raises ``_host.Failed``."""
    try:
        record_file = record_path(root, state_dir)
        targets = {path: _validate.rooted_path("files", root, path) for path in files}
        record = load(record_file)
        current = {path: read_bytes(real, "file") for path, real in targets.items()}
    except (_validate.InvalidValue, RecordError, FileProblem) as exc:
        raise Failed(str(exc)) from None

    result = dict(changed=False, record_file=record_file, recorded=[], restored=[], diff=[])
    writes = []  # (real path, bytes or None)
    if state == "recorded":
        try:
            for path in files:
                if add_file(record, path, current[path]):
                    result["recorded"].append(path)
        except RecordError as exc:
            raise Failed(str(exc)) from None
    else:
        for path in files:
            entry = record["files"].pop(path, None)
            if entry is None:
                if unrecorded == "keep" or current[path] is None:
                    continue
                want = None
            else:
                try:
                    want = decode(path, entry)
                except RecordError as exc:
                    raise Failed(str(exc)) from None
                result["changed"] = True  # the record loses the entry
            if want != current[path]:
                writes.append((targets[path], want))
                result["diff"].append(_diff(path, current[path], want))
            result["restored"].append({"path": path, "content": "absent" if want is None else f"{len(want)} bytes"})
    result["changed"] = bool(result["changed"] or result["recorded"] or writes)
    if host.check_mode or not result["changed"]:
        return result
    try:
        if state == "recorded":
            save(record_file, record, host.atomic_move)
        else:
            for real, want in writes:
                put_back(real, want, host.atomic_move)
            save(record_file, record, host.atomic_move)  # entries go only once their files are back
    except RecordError as exc:
        raise Failed(str(exc), **result) from None
    return result


def _diff(path, before, after):
    def text(data):
        return "" if data is None else data.decode("utf-8", "replace")

    return {"before_header": path, "after_header": path, "before": text(before), "after": text(after)}
