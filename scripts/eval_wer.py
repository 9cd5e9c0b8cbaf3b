"""WER per language through the real server vs openai-whisper's own transcribe(), same weights and settings.

Every real clip of ../shared/eval (not those its README marks as not for WER),
in beam 5 and greedy. Writes docs/accuracy.md. Run: .venv/bin/python scripts/eval_wer.py
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr_server.config import DTYPE_SETTINGS, Config
from asr_server.engine.audio_decoding import decode_wav
from tests.harness import (
    REPO,
    Clip,
    ServerProcess,
    load_manifest,
    load_reference_model,
    reference_transcribe,
    transcribe,
    wer,
)


def run_server(clips: list[Clip], beam: int, quantize: str = "none", dtype: str = "auto") -> list[str]:
    texts = []
    env = {"ASR_BEAM_SIZE": str(beam), "SERVER_API_KEY": "", "ASR_QUANTIZE": quantize, "ASR_DTYPE": dtype}
    with ServerProcess(env=env) as server:
        for clip in clips:
            reply = transcribe(server.url, clip.path.read_bytes(), language=clip.lang)
            texts.append(reply["text"])
    return texts


def run_reference(clips: list[Clip], beam: int) -> list[str]:
    model = load_reference_model(Config().model_path)
    texts = []
    for clip in clips:
        samples = decode_wav(clip.path.read_bytes(), 1e9).samples
        texts.append(reference_transcribe(model, samples, clip.lang, beam))
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy.md")
    parser.add_argument("--int8-only", action="store_true",
                        help="measure only the WER cost of ASR_QUANTIZE=int8 (greedy) and add it to --out")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPE_SETTINGS[1:],
                        help="measure only ASR_DTYPE: each of these against the first, both through "
                             "the server in every --beams, and add it to --out")
    args = parser.parse_args()
    clips = load_manifest()
    if args.int8_only:
        return int8_cost(clips, args.out)
    if args.dtypes:
        return dtype_cost(clips, args.beams, args.dtypes, args.out)
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_lang[clip.lang].append(i)
    rows = []
    for beam in args.beams:
        server_texts = run_server(clips, beam)
        ref_texts = run_reference(clips, beam)
        for lang, idx in sorted(by_lang.items()):
            refs = [clips[i].text for i in idx]
            s = wer(refs, [server_texts[i] for i in idx], lang)
            r = wer(refs, [ref_texts[i] for i in idx], lang)
            rows.append((beam, lang, len(idx), s, r))
            print(f"beam={beam} {lang}: server {s:.2f} reference {r:.2f}", flush=True)
    audio_min = sum(c.duration for c in clips) / 60
    lines = [
        "# Accuracy: the server vs openai-whisper's own transcribe()",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()} ({platform.processor() or 'cpu'}), "
        f"model `base` converted by `make model`, {len(clips)} real clips ({audio_min:.1f} min) "
        "from `../shared/eval/` (all but the clip its README marks as not for WER).",
        "",
        "Command: `.venv/bin/python scripts/eval_wer.py`",
        "",
        "WER in percent after Whisper's normalisers (English: `EnglishTextNormalizer`, others: "
        "`BasicTextNormalizer`), corpus-level per language. Both sides get the language code, "
        "the same 16 kHz samples, temperature fallback (0.0 to 1.0 by 0.2) and best_of 5; "
        "the server adds its VAD gate.",
        "",
        "| decoding | language | clips | server WER | transcribe() WER | server − reference |",
        "|---|---|---|---|---|---|",
    ]
    for beam, lang, n, s, r in rows:
        name = "beam 5" if beam == 5 else ("greedy" if beam == 1 else f"beam {beam}")
        lines.append(f"| {name} | {lang} | {n} | {s:.2f} | {r:.2f} | {s - r:+.2f} |")
    lines += ["", "Speed is measured by `scripts/bench.py` (docs/benchmarks.md), not here.",
              "Identical figures are expected: at temperature 0 both run the same decoder on the same",
              "samples, and the VAD gate dropped nothing on these clips. They can part only where a",
              "window falls back to sampling (temperature > 0), which is random on both sides."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


def int8_cost(clips: list[Clip], out: Path) -> int:
    """Greedy WER per language with float32 and with ASR_QUANTIZE=int8, both through the server."""
    langs = sorted({c.lang for c in clips})
    float32, int8 = run_server(clips, 1), run_server(clips, 1, "int8")
    lines = ["", "## The WER cost of `ASR_QUANTIZE=int8` (CPU)", "",
             "Command: `.venv/bin/python scripts/eval_wer.py --int8-only`: greedy, the same "
             f"{len(clips)} clips, both through the server.", "",
             "| language | float32 WER | int8 WER | int8 − float32 |", "|---|---|---|---|"]
    for lang in langs:
        idx = [i for i, c in enumerate(clips) if c.lang == lang]
        refs = [clips[i].text for i in idx]
        a, b = wer(refs, [float32[i] for i in idx], lang), wer(refs, [int8[i] for i in idx], lang)
        lines.append(f"| {lang} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
        print(f"{lang}: float32 {a:.2f} int8 {b:.2f}", flush=True)
    replace_section(out, "## The WER cost of `ASR_QUANTIZE=int8`", lines)
    return 0


def dtype_cost(clips: list[Clip], beams: list[int], dtypes: list[str], out: Path) -> int:
    """WER per language with each ASR_DTYPE, all through the server, against the first dtype."""
    langs = sorted({c.lang for c in clips})
    base, others = dtypes[0], dtypes[1:]
    heading = "## The WER of `ASR_DTYPE`"
    lines = ["", heading, "",
             f"Command: `.venv/bin/python scripts/eval_wer.py --dtypes {' '.join(dtypes)}`: the same "
             f"{len(clips)} clips through the server, each dtype in a server of its own "
             f"({datetime.date.today()}, {platform.machine()}).", "",
             "| decoding | language | " + " | ".join(f"{d} WER" for d in dtypes) + " | "
             + " | ".join(f"{d} − {base}" for d in others) + " |",
             "|---|---|" + "---|" * (2 * len(dtypes) - 1)]
    for beam in beams:
        texts = {dtype: run_server(clips, beam, dtype=dtype) for dtype in dtypes}
        for lang in langs:
            idx = [i for i, c in enumerate(clips) if c.lang == lang]
            refs = [clips[i].text for i in idx]
            wers = {d: wer(refs, [texts[d][i] for i in idx], lang) for d in dtypes}
            name = "greedy" if beam == 1 else f"beam {beam}"
            lines.append(f"| {name} | {lang} | " + " | ".join(f"{wers[d]:.2f}" for d in dtypes) + " | "
                         + " | ".join(f"{wers[d] - wers[base]:+.2f}" for d in others) + " |")
            print(lines[-1], flush=True)
    replace_section(out, heading, lines)
    return 0


def replace_section(out: Path, heading: str, lines: list[str]) -> None:
    """Put ``lines`` (which start with a blank line and ``heading``) in place of that section of ``out``."""
    text = out.read_text()
    if heading in text:
        start = text.index("\n" + heading)
        following = text.find("\n## ", start + 1)
        text = text[:start] + (text[following:] if following >= 0 else "\n")
    out.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
