"""py-spy beside a benchmark: record a server process for a few seconds, then summarise
where each of its threads spent the samples (markdown).

    record(pid, seconds, path)   # blocks; run it beside the load (a thread, a task)
    print(summary(path, seconds))

Raw output is one line per distinct stack, `thread (0x..);frame;frame;... count`, frames
`function (file:line)`. Idle samples are left out (py-spy's default), so a thread's share of
`rate x seconds` is the fraction of the time it was running Python or native code.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

RATE = 200
TOP = 12


def available() -> bool:
    return shutil.which("py-spy") is not None


def record(pid: int, seconds: float, path: Path) -> None:
    """py-spy record --format raw for `seconds`, without pausing the process (blocks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", str(RATE), "--format", "raw", "--threads", "--nonblocking",
             "--output", str(path)],
            capture_output=True, text=True, timeout=seconds + 30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        path.write_text(f"# py-spy failed: {exc!r}\n")
        return
    if out.returncode != 0 and not path.exists():
        path.write_text(f"# py-spy failed ({out.returncode}): {out.stderr[-500:]}\n")


def _short(frame: str) -> str:
    """`fn (path/to/file.py:12)` -> `fn (file.py)`: lines split one function into many."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def summary(path: Path, seconds: float) -> str:
    """Per thread: busy share, top self frames and top inclusive frames of app/ code."""
    text = path.read_text(errors="replace") if path.exists() else ""
    if not text or text.startswith("# py-spy failed"):
        return text.strip() or "(no samples)"
    self_by: dict[str, Counter[str]] = {}
    incl_by: dict[str, Counter[str]] = {}
    total: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        raw = [f for f in frames[1:] if "(" in f]
        calls = [_short(f) for f in raw]
        n = int(count)
        total[thread] += n
        if calls:
            self_by.setdefault(thread, Counter())[calls[-1]] += n
        mine = incl_by.setdefault(thread, Counter())
        for f in {c for c, r in zip(calls, raw, strict=True) if " (app/" in r or "/app/" in r}:
            mine[f] += n
    out = []
    budget = RATE * seconds
    for thread, n in total.most_common():
        if n < budget * 0.02:
            continue
        out.append(f"**{thread}**: {n} samples ({100 * n / budget:.0f}% of {seconds:.0f} s)\n")
        out.append("| self | share |\n|---|---:|")
        out += [f"| `{f}` | {100 * c / n:.0f}% |" for f, c in self_by[thread].most_common(TOP)]
        if incl_by.get(thread):
            out.append("\n| app/ inclusive | share |\n|---|---:|")
            out += [f"| `{f}` | {100 * c / n:.0f}% |"
                    for f, c in incl_by[thread].most_common(TOP)]
        out.append("")
    return "\n".join(out)
