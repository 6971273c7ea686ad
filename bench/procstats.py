"""What the end-to-end benchmark reads about processes and directories (Linux /proc).

* CPU seconds of a process: utime + stime from `/proc/<pid>/stat` (all its threads),
  in clock ticks of `os.sysconf("SC_CLK_TCK")`.
* Peak RSS: `VmHWM` from `/proc/<pid>/status` (the kernel's high-water mark of the
  resident set since the process started), current RSS: `VmRSS`.
* Stored bytes: the sum of the apparent sizes (`st_size`) of the regular files under
  a directory, so our data dir and the rivals' repositories are counted alike.
"""

from __future__ import annotations

import os
import stat

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds the process `pid` has used so far (all threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                value, unit = line.split(":", 1)[1].split()
                assert unit == "kB", line
                return int(value)
    raise KeyError(f"{key} not in /proc/{pid}/status")


def peak_rss_bytes(pid: int) -> int:
    """Return the peak resident set size (VmHWM) of `pid` in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def rss_bytes(pid: int) -> int:
    """Return the current resident set size (VmRSS) of `pid` in bytes."""
    return _status_kib(pid, "VmRSS") * 1024


def dir_bytes(path: str | os.PathLike[str], *, suffixes: tuple[str, ...] | None = None) -> int:
    """Return the summed st_size of the regular files under `path` (optionally by suffix)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if suffixes is not None and not name.endswith(suffixes):
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # a temp file renamed away while we walk
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
